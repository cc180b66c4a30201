"""What `flowerbed simulate -m` adds to one run: a job that fails is recorded and the
sweep goes on; the jobs share a W&B group; the sweep ends with its report.

A job's outcome is its `summary.json`: `completed`, `failed` (a bad value, a crash) or
`infeasible` (every budget spent before round 1), with the cause. At the end the report
is written, and the command exits non-zero naming every failed job. Under a search
(the Optuna sweeper) an infeasible job is a bad trial, not a failure.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from flowerbed.atomic import write_json_atomic
from flowerbed.config import FlowerbedConfig
from flowerbed.tracking import RunLayout

log = logging.getLogger("flowerbed")
INFEASIBLE = float("inf")
"""The objective a failed or infeasible job returns to a sweeper."""


def record_outcome(run_dir: Path, status: str, error: BaseException) -> float:
    """Write a job's failure into its summary.json; return the objective for the sweeper."""
    cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    log.error("this sweep job is %s: %s", status, cause)
    write_json_atomic(RunLayout(run_dir).summary, {"status": status, "error": cause}, durable=False)
    return INFEASIBLE


def in_sweep_group(cfg: FlowerbedConfig, sweep_dir: str) -> FlowerbedConfig:
    """The config with the sweep's W&B group, unless one is set."""
    if cfg.tracking.wandb_group:
        return cfg
    group = f"{Path(sweep_dir).parent.name}/{Path(sweep_dir).name}"
    return dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, wandb_group=group))


def pin_gpu(job_number: int, parallel_jobs: int) -> None:
    """With jobs in parallel on a machine of several GPUs: one GPU per job, round robin.

    Must run before anything in this process touches CUDA (Ray's workers inherit it).
    """
    import torch

    count = torch.cuda.device_count()
    if parallel_jobs > 1 and count > 1 and "CUDA_VISIBLE_DEVICES" not in os.environ:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(job_number % count)


class SweepReport(Callback):
    """Hydra callback: after every job of a sweep, the report and the exit status."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from flowerbed.tracking.report import write_report

        sweep_dir = Path(str(config.hydra.sweep.dir))
        report = write_report(sweep_dir)
        log.info("sweep report: %s (and report.csv, plots)", report.markdown)
        searching = "optuna" in str(config.hydra.sweeper.get("_target_", ""))
        failed = [f for f in report.failed_jobs if not (searching and "infeasible" in f)]
        if failed:
            raise SystemExit(
                f"flowerbed simulate: {len(failed)} sweep job(s) failed:\n  "
                + "\n  ".join(failed)
                + f"\nthe report of the others is {report.markdown}"
            )
