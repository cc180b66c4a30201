"""Shared fixtures: tiny configs and one real simulated federation reused by several tests.

Configs are composed from conf/ with Hydra overrides, exactly as `flowerbed simulate`
composes them, so tests run the command line's defaults.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from flowerbed.config import FlowerbedConfig, compose_config

# Tests never reach a hub: a stray download attempt fails at once instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
# Deployed nodes keep their ledgers' mirrors under $XDG_STATE_HOME: never the user's own.
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="flowerbed-test-state-")

TINY = [
    "name=test",
    "model=tiny",
    "data=synthetic",
    "privacy=off",
    "continual=off",
    "data.seq_len=32",
    "data.synthetic_docs_per_domain=60",
    "federation.num_clients=2",
    "federation.rounds=3",
    "train.local_steps=6",
    "train.batch_size=8",
    "train.lr=3e-3",
    "train.warmup_steps=2",
    "train.eval_batches=4",
]


def section(name: str, *overrides: str) -> Any:
    """One section of the composed config, e.g. `section("model", "model=tiny")`."""
    return getattr(compose_config(*overrides), name)


def override(key: str, value: Any) -> str:
    """One Hydra override for a Python value (None is null; strings are quoted)."""
    if value is None:
        return f"{key}=null"
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    if isinstance(value, str):
        return f"{key}='{value}'"
    if isinstance(value, list | tuple):
        return f"{key}=[{','.join(repr(v) for v in value)}]"
    return f"{key}={value!r}"


def tiny_config(cache_dir: Path, **sections: dict[str, Any]) -> FlowerbedConfig:
    """A tiny model on the synthetic corpus (a round takes well under a second).

    `sections` change keys of the config's sections: `privacy={"mode": "dp_sgd", ...}`.
    """
    overrides = [*TINY, override("data.cache_dir", str(cache_dir))]
    for section, values in sections.items():
        overrides += [override(f"{section}.{key}", value) for key, value in values.items()]
    return compose_config(*overrides)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def federated_run(
    tmp_path_factory: pytest.TempPathFactory, cache_dir: Path
) -> tuple[FlowerbedConfig, Path]:
    """One finished 3-round federation through Flower's Simulation Engine."""
    from flowerbed.run.simulation import simulate

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
