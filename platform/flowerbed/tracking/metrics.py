"""metrics.jsonl: one record per round, appended durably, so a crash loses nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from flowerbed.atomic import write_atomic


class MetricsLog:
    """Append-only round records; on resume, records after the checkpoint are dropped."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_after(self, round_: int) -> list[dict[str, Any]]:
        """Keep the records of rounds <= `round_` (what the checkpoint being resumed saw)."""
        kept = [r for r in self.records() if r["round"] <= round_]
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept), durable=True)
        return kept

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
