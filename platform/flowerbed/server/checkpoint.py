"""Round checkpoints: the global weights, the outer optimizer's state, the round and its
record (which may still wait for held-out losses), written atomically, the newest kept.

A run interrupted after round r resumes from `checkpoints/round-r` and, with the same
seed, ends with the same weights as a run that was never interrupted.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file

from flowerbed.atomic import publish_folder
from flowerbed.server.outer import FedAvgOuter

PREFIX = "round-"


Weights = dict[str, torch.Tensor]


def snapshot(model: torch.nn.Module, outer: FedAvgOuter) -> tuple[Weights, Weights]:
    """Copies of what a checkpoint holds, to write while the next round changes the model.

    A weight under two names (tied embeddings) is kept once, under its first name, as
    safetensors' `save_model` keeps it; `load_model` restores both.
    """
    weights, seen = {}, set()
    for name, tensor in model.state_dict().items():
        where = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.shape)
        if where not in seen:
            seen.add(where)
            weights[name] = tensor.detach().to("cpu", copy=True).contiguous()
    return weights, {k: v.detach().clone() for k, v in outer.state_dict().items()}


def write_checkpoint(
    folder: Path,
    round_: int,
    weights: Weights,
    outer_state: Weights,
    keep: int,
    record: dict[str, Any] | None = None,
) -> Path:
    """Write `round-<r>/` (weights, outer state, then state.json with the round's record
    last); prune older ones."""
    target = folder / f"{PREFIX}{round_:05d}"
    staging = folder / f".{target.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_file(weights, str(staging / "model.safetensors"), metadata={"format": "pt"})
    save_file(outer_state, str(staging / "outer.safetensors"))
    (staging / "state.json").write_text(json.dumps({"round": round_, "record": record}))
    publish_folder(staging, target, durable=True)
    for old in sorted(folder.glob(f"{PREFIX}*"))[:-keep]:
        shutil.rmtree(old)
    return target


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint (one whose state.json exists), or None."""
    complete = [p for p in sorted(folder.glob(f"{PREFIX}*")) if (p / "state.json").is_file()]
    return complete[-1] if complete else None


def load_checkpoint(
    path: Path, model: torch.nn.Module, outer: FedAvgOuter
) -> tuple[int, dict[str, Any] | None]:
    """Load the weights and outer state saved at `path`; return the round they end and its
    record as it was when the round was trained (None: a checkpoint without one)."""
    for name in ("model.safetensors", "outer.safetensors"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"checkpoint {path} has no {name}; it is incomplete")
    load_model(model, str(path / "model.safetensors"))
    outer.load_state_dict(load_file(str(path / "outer.safetensors")))
    state = json.loads((path / "state.json").read_text())
    return int(state["round"]), state.get("record")
