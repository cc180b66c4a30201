"""A run directory before its first round: the resolved config, tokenizer, validation
split and, in simulation or a loopback walk-through, every client's shard.

A deployment's coordinator holds no institution's data: it writes the coordinator's
part only, and each institution cuts its own shard (`flowerbed deploy shard`).
"""

from __future__ import annotations

from omegaconf import OmegaConf

from flowerbed.atomic import make_private
from flowerbed.config import FlowerbedConfig, to_plain_dict
from flowerbed.continual.stream import experience_dir
from flowerbed.data import FederatedSplits, load_tokenizer, prepare_splits
from flowerbed.tracking import RunLayout


def prepare_coordinator(cfg: FlowerbedConfig, layout: RunLayout) -> FederatedSplits:
    """Write config.yaml, the tokenizer and the validation split; return every split."""
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.config.write_text(OmegaConf.to_yaml(to_plain_dict(cfg)))
    tokenizer = load_tokenizer(cfg.data.tokenizer, cfg.model.pretrained)
    continual = cfg.continual
    splits = prepare_splits(
        cfg.data,
        tokenizer,
        cfg.federation.num_clients,
        cfg.seed,
        continual.experiences if continual.enabled else 1,
        continual.split,
    )
    tokenizer.save_pretrained(layout.tokenizer)
    splits.validation.save(layout.data, "validation")
    return splits


def write_client_shards(cfg: FlowerbedConfig, layout: RunLayout, splits: FederatedSplits) -> None:
    """Each client's shard under clients/client-<i>/data (one folder per experience),
    readable by its owner only: the blocks are the private text, reversibly tokenized."""
    for partition_id, shards in enumerate(splits.clients):
        data_dir = layout.client_data(partition_id)
        make_private(data_dir.parent)  # before the first block is written, and again after
        if cfg.continual.enabled:
            for k, shard in enumerate(shards):
                shard.save(experience_dir(data_dir, k))
        else:
            shards[0].save(data_dir)
        make_private(data_dir.parent)


def prepare_run(cfg: FlowerbedConfig, layout: RunLayout) -> None:
    """Everything a simulated federation needs before round 1."""
    write_client_shards(cfg, layout, prepare_coordinator(cfg, layout))
