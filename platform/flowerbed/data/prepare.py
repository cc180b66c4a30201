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
    clients: list[ClientShard]


def split_validation(blocks: Blocks, fraction: float) -> tuple[Blocks, Blocks]:
    """The last `fraction` of each domain's blocks (whole documents, mostly) is validation."""
    val, rest = [], []
    for d in np.unique(blocks.domains):
        members = np.flatnonzero(blocks.domains == d)
        n_val = max(round(len(members) * fraction), 1) if len(members) >= 2 else 0
        val.append(members[len(members) - n_val :])
        rest.append(members[: len(members) - n_val])
    return blocks.subset(np.concatenate(val)), blocks.subset(np.concatenate(rest))


def make_client_shards(
    blocks: Blocks, cfg: DataConfig, num_clients: int, rng: np.random.Generator
) -> list[ClientShard]:
    shards = []
    parts = partition(blocks.domains, num_clients, cfg.partition, cfg.dirichlet_alpha, rng)
    for client, index in enumerate(parts):
        if len(index) < 2:
            raise DataError(
                f"client {client} would get {len(index)} block(s) of {blocks.seq_len} tokens "
                "but needs at least 2 (one to train on, one held out): give more data, fewer "
                "clients (federation.num_clients) or a shorter data.seq_len"
            )
        index = rng.permutation(index)
        n_heldout = max(1, round(len(index) * cfg.heldout_fraction))
        shards.append(
            ClientShard(
                blocks.subset(np.sort(index[n_heldout:])), blocks.subset(np.sort(index[:n_heldout]))
            )
        )
    return shards


def prepare_splits(
    cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, num_clients: int, seed: int
) -> FederatedSplits:
    """Read (or load from cache) the corpus, carve out validation, and shard the rest."""
    key, read = corpus_source(cfg, seed)
    blocks = cached_blocks(Path(cfg.cache_dir).expanduser(), key, tokenizer, cfg.seq_len, read)
    if len(blocks) < 2 + num_clients * 2:
        raise DataError(
            f"the {cfg.corpus} corpus gives {len(blocks)} blocks of {cfg.seq_len} tokens, too "
            f"few for a validation split and {num_clients} clients with 2 blocks each: give "
            "more text, fewer clients or a shorter data.seq_len"
        )
    validation, rest = split_validation(blocks, cfg.val_fraction)
    clients = make_client_shards(rest, cfg, num_clients, np.random.default_rng(seed))
    log.info(
        "data: %d blocks of %d tokens in %d domains; %d for validation, %s per client",
        len(blocks),
        cfg.seq_len,
        len(blocks.domain_names),
        len(validation),
        "/".join(str(len(c.train)) for c in clients),
    )
    return FederatedSplits(validation, clients)
