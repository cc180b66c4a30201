"""Weights & Biases, when `tracking.wandb=true` (offline by default: no network needed).

One W&B run per flowerbed run: the config (swept keys included), every round's record
(each client's ε and the continual loss matrix among them), and at the end the summary,
the plots and the final model as an artifact. The jobs of a sweep share a group.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from flowerbed.config import FlowerbedConfig, to_plain_dict


def run_id(run_dir: Path) -> str:
    """A W&B id unique to the run directory: a sweep's jobs (`.../0`, `.../1`) differ."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"{run_dir.parent.name}-{run_dir.name}")


class WandbRun:
    """A thin wrapper so the server logs the same way with or without W&B."""

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
            group=cfg.tracking.wandb_group,
            config=to_plain_dict(cfg),
            id=run_id(run_dir),
            resume="allow" if resume else None,
        )

    @property
    def id(self) -> str | None:
        return self._run.id if self._run is not None else None

    def log(self, record: dict[str, Any]) -> None:
        if self._run is not None:
            self._run.log({k: v for k, v in record.items() if v is not None}, step=record["round"])

    def finish(self, summary: dict[str, Any], plots: list[Path], model_dir: Path) -> None:
        """The summary's numbers, the plots as images, the model as an artifact; then close."""
        if self._run is None:
            return
        import wandb

        self._run.summary.update({k: v for k, v in summary.items() if isinstance(v, int | float)})
        images = {p.stem: wandb.Image(str(p)) for p in plots if p.is_file()}
        if images:
            self._run.log(images)
        if model_dir.is_dir():
            artifact = wandb.Artifact(f"model-{self._run.id}", type="model")
            artifact.add_dir(str(model_dir))
            self._run.log_artifact(artifact)
        self._run.finish()
