"""Shared fixtures: tiny configs and one real simulated federation reused by several tests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from flowerbed.config import FlowerbedConfig, load_config

# Tests never reach a hub: a stray download attempt fails at once instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


def tiny_config(cache_dir: Path, **sections: dict[str, Any]) -> FlowerbedConfig:
    """A tiny model on the synthetic corpus: a federation round takes well under a second."""
    base: dict[str, Any] = {
        "name": "test",
        "model": {"preset": "tiny"},
        "data": {
            "corpus": "synthetic",
            "seq_len": 32,
            "synthetic_docs_per_domain": 60,
            "cache_dir": str(cache_dir),
        },
        "federation": {"num_clients": 2, "rounds": 3},
        "train": {
            "local_steps": 6,
            "batch_size": 8,
            "lr": 3e-3,
            "warmup_steps": 2,
            "eval_batches": 4,
        },
        "tracking": {"plots": True},
    }
    for key, values in sections.items():
        base[key] = {**base.get(key, {}), **values}
    return load_config(base)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def federated_run(
    tmp_path_factory: pytest.TempPathFactory, cache_dir: Path
) -> tuple[FlowerbedConfig, Path]:
    """One finished 3-round federation through Flower's Simulation Engine."""
    from flowerbed.cli.simulate import simulate

    cfg = tiny_config(cache_dir)
    run_dir = tmp_path_factory.mktemp("runs") / "complete"
    simulate(cfg, run_dir)
    return cfg, run_dir


@pytest.fixture
def copy_run(tmp_path: Path):
    def _copy(run_dir: Path) -> Path:
        target = tmp_path / run_dir.name
        shutil.copytree(run_dir, target)
        return target

    return _copy
