"""A client's experiences: prepared shard folders under its data directory, in name order.

A data directory holds either one shard (`train.*` and `heldout.*` files) or one folder
per experience (`exp-000`, `exp-001`, ...). A new folder is picked up at the next round,
once its `heldout.json` exists: shards are written train first, held-out last.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flowerbed.data.prepare import ClientShard

READY_MARKER = "heldout.json"


def experience_dir(data_dir: Path, index: int) -> Path:
    return data_dir / f"exp-{index:03d}"


@dataclass(frozen=True)
class Experience:
    index: int
    name: str
    folder: Path

    def shard(self) -> ClientShard:
        return ClientShard.load(self.folder)


def scan_experiences(data_dir: Path) -> list[Experience]:
    """Every complete experience under `data_dir`, in arrival (name) order."""
    if not data_dir.is_dir():
        raise FileNotFoundError(f"client data folder {data_dir} does not exist")
    if (data_dir / READY_MARKER).is_file():
        return [Experience(0, data_dir.name, data_dir)]
    folders = sorted(p for p in data_dir.iterdir() if (p / READY_MARKER).is_file())
    if not folders:
        raise FileNotFoundError(
            f"no prepared data in {data_dir}: expected a shard (train.* and heldout.* files) "
            "or experience folders holding one"
        )
    return [Experience(i, p.name, p) for i, p in enumerate(folders)]


def arrived(experiences: list[Experience], round_: int, every: int) -> list[Experience]:
    """The experiences that have arrived by `round_`: one per `every` rounds, or (0) all."""
    if every == 0:
        return experiences
    return experiences[: min(len(experiences), 1 + (round_ - 1) // every)]
