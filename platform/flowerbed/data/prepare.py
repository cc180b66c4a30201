"""From a data config to the run's splits: a validation set and one shard per client.

All of it happens before any training, so bad input stops a run while nothing is lost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from flowerbed.config import DataConfig
from flowerbed.data.blocks import Blocks
from flowerbed.data.corpus import corpus_source
from flowerbed.data.documents import DataError
from flowerbed.data.packing import cached_blocks
from flowerbed.data.partition import partition

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


@dataclass
class ClientShard:
    """What one client holds: blocks to train on and blocks it keeps for held-out loss."""

    train: Blocks
    heldout: Blocks

    def save(self, folder: Path) -> None:
        self.train.save(folder, "train")
        self.heldout.save(folder, "heldout")

    @classmethod
    def load(cls, folder: Path) -> ClientShard:
        if not folder.is_dir():
            raise FileNotFoundError(f"client data folder {folder} does not exist")
        return cls(Blocks.load(folder, "train"), Blocks.load(folder, "heldout"))


@dataclass
class FederatedSplits:
    validation: Blocks
    clients: list[list[ClientShard]]
    """Per client, its experiences in arrival order (one unless continual)."""


def split_validation(blocks: Blocks, fraction: float) -> tuple[Blocks, Blocks]:
    """The last `fraction` of each domain's blocks (whole documents, mostly) is validation."""
    val, rest = [], []
    for d in np.unique(blocks.domains):
        members = np.flatnonzero(blocks.domains == d)
        n_val = max(round(len(members) * fraction), 1) if len(members) >= 2 else 0
        val.append(members[len(members) - n_val :])
        rest.append(members[: len(members) - n_val])
    return blocks.subset(np.concatenate(val)), blocks.subset(np.concatenate(rest))


def experience_groups(
    blocks: Blocks, index: np.ndarray, count: int, split: str
) -> list[np.ndarray]:
    """Cut one client's blocks into `count` experiences, in arrival order.

    `domain`: the corpus's domains in consecutive groups (experience k is group k), so
    each experience brings text of a new kind; `slice`: consecutive slices of the client's
    blocks in corpus order, as if the same sources kept writing.
    """
    if count == 1:
        return [index]
    if split == "slice":
        return np.array_split(index, count)
    groups = np.array_split(np.arange(len(blocks.domain_names)), count)
    return [index[np.isin(blocks.domains[index], group)] for group in groups]


def make_client_shards(
    blocks: Blocks,
    cfg: DataConfig,
    num_clients: int,
    rng: np.random.Generator,
    experiences: int = 1,
    split: str = "domain",
) -> list[list[ClientShard]]:
    """Each client's experiences (one unless continual), each with its own held-out blocks."""
    if split == "domain" and experiences > len(blocks.domain_names):
        raise DataError(
            f"continual.experiences={experiences} by domain needs at least as many domains, "
            f"but the {cfg.corpus} corpus has {len(blocks.domain_names)}: lower "
            "continual.experiences or set continual.split=slice"
        )
    clients = []
    groups = blocks.users if blocks.users is not None else blocks.documents
    parts = partition(blocks.domains, num_clients, cfg.partition, cfg.dirichlet_alpha, rng, groups)
    for client, index in enumerate(parts):
        shards = []
        for k, members in enumerate(experience_groups(blocks, index, experiences, split)):
            if len(members) < 2:
                where = f"client {client}" + (f", experience {k}," if experiences > 1 else "")
                raise DataError(
                    f"{where} would get {len(members)} block(s) of {blocks.seq_len} tokens "
                    "but needs at least 2 (one to train on, one held out): give more data, "
                    "fewer clients (federation.num_clients), fewer experiences, a "
                    "partition that gives every client every domain, or a shorter "
                    "data.seq_len"
                )
            members = rng.permutation(members)
            n_heldout = max(1, round(len(members) * cfg.heldout_fraction))
            train, heldout = np.sort(members[n_heldout:]), np.sort(members[:n_heldout])
            shards.append(ClientShard(blocks.subset(train), blocks.subset(heldout)))
        clients.append(shards)
    return clients


def prepare_splits(
    cfg: DataConfig,
    tokenizer: PreTrainedTokenizerBase,
    num_clients: int,
    seed: int,
    experiences: int = 1,
    split: str = "domain",
) -> FederatedSplits:
    """Read (or load from cache) the corpus, carve out validation, and shard the rest."""
    key, read, cache = corpus_source(cfg, seed)
    blocks = cached_blocks(cache, key, tokenizer, cfg.seq_len, read, cfg.packing)
    if len(blocks) < 2 + num_clients * 2:
        raise DataError(
            f"the {cfg.corpus} corpus gives {len(blocks)} blocks of {cfg.seq_len} tokens, too "
            f"few for a validation split and {num_clients} clients with 2 blocks each: give "
            "more text, fewer clients or a shorter data.seq_len"
        )
    validation, rest = split_validation(blocks, cfg.val_fraction)
    clients = make_client_shards(
        rest, cfg, num_clients, np.random.default_rng(seed), experiences, split
    )
    log.info(
        "data: %d blocks of %d tokens in %d domains; %d for validation; %s%s",
        len(blocks),
        cfg.seq_len,
        len(blocks.domain_names),
        len(validation),
        per_client_summary([sum(len(e.train) for e in c) for c in clients]),
        f", in {experiences} experiences" if experiences > 1 else "",
    )
    return FederatedSplits(validation, clients)


def per_client_summary(counts: list[int]) -> str:
    """Training blocks per client in a few words, however many clients there are."""
    if len(counts) == 1:
        return f"{counts[0]} training blocks for the one client"
    spread = f"{min(counts)}" if min(counts) == max(counts) else f"{min(counts)} to {max(counts)}"
    return (
        f"{spread} training blocks per client across {len(counts)} clients "
        f"(median {int(np.median(counts))}, total {sum(counts)})"
    )


def institution_shard(
    cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, seed: int = 0
) -> ClientShard:
    """An institution's own files (`cfg.paths`) as one shard: training and held-out blocks.

    The same checks as in simulation apply (empty, binary, non-UTF-8 files are named).
    """
    key, read, cache = corpus_source(cfg, seed)
    blocks = cached_blocks(cache, key, tokenizer, cfg.seq_len, read, cfg.packing)
    if len(blocks) < 2:
        raise DataError(
            f"{', '.join(cfg.paths)} give(s) {len(blocks)} block(s) of {cfg.seq_len} tokens; "
            "a shard needs at least 2 (one to train on, one held out): give more text"
        )
    return make_client_shards(blocks, cfg, 1, np.random.default_rng(seed))[0][0]
