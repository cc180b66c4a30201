"""A sweep directory read back: its jobs, the keys they varied, and one row per setting.

Each job directory holds what every run writes (`config.yaml`, `metrics.jsonl`,
`summary.json`, a `status` of `completed` or `failed` with its cause) plus Hydra's
`.hydra/overrides.yaml`. A setting is one combination of the swept keys; its seeds are
aggregated as mean and sample standard deviation.
"""

from __future__ import annotations

import functools
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flowerbed.tracking.layout import RunLayout
from flowerbed.tracking.metrics import MetricsLog

METRICS = (
    ("epsilon", "ε spent", ".2f"),
    ("final_val_loss", "val loss", ".4f"),
    ("final_val_perplexity", "val ppl", ".1f"),
    ("average_loss", "avg loss (seen)", ".4f"),
    ("forgetting", "forgetting", "+.4f"),
    ("backward_transfer", "BWT", "+.4f"),
    ("tokens", "tokens", ",.0f"),
    ("client_seconds", "client s", ".1f"),
    ("wall_seconds", "wall s", ".1f"),
)
"""(key, column title, number format) of every number a row aggregates over seeds."""


@dataclass
class SweepJob:
    folder: Path
    overrides: dict[str, str]
    """The job's command-line overrides (`key=value`), as Hydra recorded them."""
    summary: dict[str, Any]
    records: list[dict[str, Any]]

    @property
    def status(self) -> str:
        return str(self.summary.get("status", "unknown"))

    def value(self, key: str) -> float | None:
        """One of `METRICS` for this job (None when it does not apply or the job failed)."""
        return self._values.get(key) if self.status == "completed" else None

    @functools.cached_property
    def _values(self) -> dict[str, Any]:
        continual = self.summary.get("continual") or {}
        derived = {
            "epsilon": self.summary.get("epsilon_max") or self.summary.get("user_level_epsilon"),
            "average_loss": continual.get("average_loss"),
            "forgetting": continual.get("forgetting"),
            "backward_transfer": continual.get("backward_transfer"),
            "tokens": self.summary.get("total_tokens"),
            "client_seconds": sum(r.get("client_train_seconds") or 0 for r in self.records),
            "wall_seconds": sum(r.get("seconds") or 0 for r in self.records),
        }
        return {**self.summary, **derived}


@dataclass
class Setting:
    """One combination of the swept keys, over its seeds."""

    keys: dict[str, str]
    jobs: list[SweepJob] = field(default_factory=list)

    def stats(self, key: str) -> tuple[float, float] | None:
        """(mean, std over seeds) of a metric; None when no job has it."""
        values = [v for j in self.jobs if (v := j.value(key)) is not None]
        if not values:
            return None
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return statistics.fmean(values), spread

    @property
    def status(self) -> str:
        failed = [j for j in self.jobs if j.status != "completed"]
        if not failed:
            return "completed"
        return f"{len(failed)} of {len(self.jobs)} failed: {failed[0].summary.get('error', '?')}"

    @property
    def wandb_runs(self) -> list[str]:
        return [j.summary["wandb_run_id"] for j in self.jobs if j.summary.get("wandb_run_id")]


def read_jobs(sweep_dir: Path) -> list[SweepJob]:
    """Every job folder under `sweep_dir` (those with Hydra's overrides.yaml), in job order."""
    jobs = []
    folders = sorted(
        sweep_dir.glob("*/.hydra/overrides.yaml"), key=lambda p: _order(p.parent.parent)
    )
    for overrides_file in folders:
        folder = overrides_file.parent.parent
        pairs = [o.split("=", 1) for o in yaml.safe_load(overrides_file.read_text()) or []]
        layout = RunLayout(folder)
        summary = json.loads(layout.summary.read_text()) if layout.summary.is_file() else {}
        summary.setdefault("status", "unknown")
        overrides = {k.lstrip("+~"): v for k, v in pairs}
        jobs.append(SweepJob(folder, overrides, summary, MetricsLog(layout.metrics).records()))
    if not jobs:
        raise FileNotFoundError(f"{sweep_dir} holds no sweep jobs (no */.hydra/overrides.yaml)")
    return jobs


def swept_keys(jobs: list[SweepJob]) -> list[str]:
    """The override keys whose value differs between jobs, except the seed."""
    keys = sorted({k for j in jobs for k in j.overrides} - {"seed"})
    return [k for k in keys if len({j.overrides.get(k) for j in jobs}) > 1]


def settings(jobs: list[SweepJob]) -> list[Setting]:
    """The jobs grouped by the values of the swept keys, in order of first appearance."""
    keys = swept_keys(jobs)
    grouped: dict[tuple, Setting] = {}
    for job in jobs:
        values = {k: job.overrides.get(k, "(default)") for k in keys}
        grouped.setdefault(tuple(values.values()), Setting(values)).jobs.append(job)
    return list(grouped.values())


def _order(folder: Path) -> tuple[int, str]:
    return (int(folder.name), "") if folder.name.isdigit() else (1 << 30, folder.name)


def kept_jobs(folder: Path, dest: Path) -> list[tuple[Path, Path]]:
    """A study's jobs as kept in the repository: each job folder of the sweep `folder`
    (Hydra names them by their overrides, up to 200 characters with commas) paired with a
    short one under `dest` (`000`, `001`, ...), listed in `dest/jobs.md`. The report reads
    a job's overrides from its `.hydra/overrides.yaml`, never from its folder's name."""
    jobs = sorted(p for p in folder.iterdir() if (p / "summary.json").is_file())
    pairs = [(job, dest / f"{i:03d}") for i, job in enumerate(jobs)]
    rows = [f"| {kept.name} | `{job.name.replace(',', ' ')}` |" for job, kept in pairs]
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "jobs.md").write_text(
        "# The jobs\n\nEach folder is one job of the sweep, named by its place. Its "
        "`.hydra/overrides.yaml`\nsays what it ran, and the report and `summarize.py` read it "
        "from there. The\noverrides of each:\n\n| job | overrides |\n|---|---|\n"
        + "\n".join(rows)
        + "\n"
    )
    return pairs
