"""A client's AdamW moments kept between rounds (DiLoCo's inner optimizer state).

A client process lives for one Message, so the moments go to the client's state directory
after each round it trains and come back at the next: `inner-optimizer/round-<r>.safetensors`,
keyed by parameter name, written atomically, never sent. A round reads the newest file
written before it, so a run resumed from round r's checkpoint reads what round r wrote even
if the interrupted run had gone further; the newest two are kept.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load, save

from flowerbed.atomic import write_atomic

FOLDER = "inner-optimizer"
KEEP = 2


def _files(state_dir: Path) -> list[tuple[int, Path]]:
    folder = state_dir / FOLDER
    return sorted((int(p.stem.split("-")[1]), p) for p in folder.glob("round-*.safetensors"))


def restore_inner_state(
    optimizer: torch.optim.Optimizer, model: torch.nn.Module, state_dir: Path, round_: int
) -> int | None:
    """Load the moments the client saved before `round_`; the round they are from, or None."""
    earlier = [(r, p) for r, p in _files(state_dir) if r < round_]
    if not earlier:
        return None
    saved_round, path = earlier[-1]
    tensors = load(path.read_bytes())
    index = {id(p): i for i, p in enumerate(q for g in optimizer.param_groups for q in g["params"])}
    state = optimizer.state_dict()
    for name, param in model.named_parameters():
        if id(param) in index and f"exp_avg/{name}" in tensors:
            state["state"][index[id(param)]] = {
                key: tensors[f"{key}/{name}"] for key in ("step", "exp_avg", "exp_avg_sq")
            }
    optimizer.load_state_dict(state)
    return saved_round


def save_inner_state(
    optimizer: torch.optim.Optimizer, model: torch.nn.Module, state_dir: Path, round_: int
) -> None:
    """Write the optimizer's moments after `round_`, then drop all but the newest files."""
    tensors = {
        f"{key}/{name}": value.detach().cpu().contiguous()
        for name, param in model.named_parameters()
        for key, value in optimizer.state.get(param, {}).items()
    }
    path = state_dir / FOLDER / f"round-{round_:05d}.safetensors"
    write_atomic(path, save(tensors), durable=True, private=True)
    for _, old in _files(state_dir)[:-KEEP]:
        old.unlink()


def inner_state_bytes(model: torch.nn.Module) -> int:
    """Bytes of one copy of AdamW's two fp32 moments for the trainable parameters."""
    return 2 * 4 * sum(p.numel() for p in model.parameters() if p.requires_grad)
