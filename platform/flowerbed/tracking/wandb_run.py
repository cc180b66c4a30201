"""Weights & Biases, when `tracking.wandb=true` (offline by default: no network needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flowerbed.config import FlowerbedConfig, to_plain_dict


class WandbRun:
    """A thin wrapper so the server loop logs the same way with or without W&B."""

    def __init__(self, cfg: FlowerbedConfig, run_dir: Path, resume: bool) -> None:
        self._run = None
        if not cfg.tracking.wandb:
            return
        import wandb

        self._run = wandb.init(
            project=cfg.tracking.wandb_project,
            mode=cfg.tracking.wandb_mode,
            dir=str(run_dir),
            name=f"{cfg.name}-{run_dir.name}",
            config=to_plain_dict(cfg),
            id=run_dir.name.replace("/", "-"),
            resume="allow" if resume else None,
        )

    def log(self, record: dict[str, Any]) -> None:
        if self._run is not None:
            self._run.log({k: v for k, v in record.items() if v is not None}, step=record["round"])

    def finish(self, summary: dict[str, Any]) -> None:
        if self._run is not None:
            self._run.summary.update(
                {k: v for k, v in summary.items() if isinstance(v, int | float)}
            )
            self._run.finish()
