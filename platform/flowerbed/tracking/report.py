"""A sweep's report: `report.md` and `report.csv`, one row per setting, plus its plots.

Written by `flowerbed report <sweep dir>` and at the end of every `flowerbed simulate -m`.
Seeds are aggregated as mean ± standard deviation; the report names the best setting
for a stated criterion: the lowest mean final validation loss whose ε stays within the
budget (every seed's).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from flowerbed.tracking.sweep import METRICS, Setting, SweepJob, read_jobs, settings, swept_keys


@dataclass(frozen=True)
class Report:
    markdown: Path
    csv: Path
    plots: list[Path]
    failed_jobs: list[str]
    """One line per failed job: its folder, overrides and cause."""


def write_report(sweep_dir: Path, max_epsilon: float | None = None) -> Report:
    """Read every job under `sweep_dir`; write report.md, report.csv and the plots there."""
    from flowerbed.tracking.sweep_plots import plot_sweep

    jobs = read_jobs(sweep_dir)
    rows = settings(jobs)
    keys = swept_keys(jobs)
    plots = plot_sweep(rows, keys, sweep_dir)
    failed = [
        f"job {_name(j)}: {j.status}: {j.summary.get('error', 'no summary.json')}"
        for j in jobs
        if j.status != "completed"
    ]
    csv_path, md_path = sweep_dir / "report.csv", sweep_dir / "report.md"
    _write_csv(csv_path, rows, keys)
    lines = [
        f"# Sweep report: {sweep_dir.name}",
        "",
        f"{len(jobs)} jobs, {len(rows)} settings, {len(failed)} failed. Swept: "
        f"{', '.join(keys) or 'nothing'}; seeds aggregated as mean ± std.",
        "",
        *_table(rows, keys),
        "",
        best_setting(rows, max_epsilon),
        "",
        *[f"![{p.stem}]({p.name})" for p in plots],
    ]
    if failed:
        lines += ["", "## Failed jobs", "", *[f"- {f}" for f in failed]]
    md_path.write_text("\n".join(lines) + "\n")
    return Report(md_path, csv_path, plots, failed)


def _name(job: SweepJob) -> str:
    """The job's folder, and its overrides unless the folder is named by them."""
    if not job.folder.name.isdigit():
        return job.folder.name
    return f"{job.folder.name} ({' '.join(f'{k}={v}' for k, v in job.overrides.items())})"


def best_setting(rows: list[Setting], max_epsilon: float | None) -> str:
    """One sentence naming the setting with the lowest mean validation loss in the budget."""
    budget = "any ε" if max_epsilon is None else f"ε ≤ {max_epsilon:g} for every seed"
    criterion = f"lowest mean final validation loss, {budget}"

    def eligible(row: Setting) -> bool:
        if row.status != "completed" or row.stats("final_val_loss") is None:
            return False
        if max_epsilon is None:
            return True
        spent = [j.value("epsilon") for j in row.jobs]
        return all(e is not None and e <= max_epsilon for e in spent)

    candidates = [r for r in rows if eligible(r)]
    if not candidates:
        return f"**Best setting** ({criterion}): none qualifies."
    best = min(candidates, key=lambda r: r.stats("final_val_loss")[0])
    name = ", ".join(f"{k}={v}" for k, v in best.keys.items()) or "the only setting"
    spent = _cell(best.stats("epsilon"), ".2f", len(best.jobs))
    return (
        f"**Best setting** ({criterion}): {name}, with val loss "
        f"{_cell(best.stats('final_val_loss'), '.4f', len(best.jobs))} and "
        + (f"ε {spent}." if spent != "-" else "no DP.")
        + _closeness(best, [r for r in candidates if r is not best])
    )


def _closeness(best: Setting, others: list[Setting]) -> str:
    """A caveat when the runner-up is within the seeds' spread, or one seed decides."""
    if not others:
        return ""
    mean, spread = best.stats("final_val_loss")
    runner = min(others, key=lambda r: r.stats("final_val_loss")[0])
    runner_mean, runner_spread = runner.stats("final_val_loss")
    gap = runner_mean - mean
    name = ", ".join(f"{k}={v}" for k, v in runner.keys.items())
    if len(best.jobs) < 2 or len(runner.jobs) < 2:
        return (
            f" The next, {name}, is {gap:.4f} behind; with one seed per setting the seeds' "
            "spread is unknown, so this order may not hold: run more seeds before choosing."
        )
    widest = max(spread, runner_spread)
    if gap <= widest:
        return (
            f" The next, {name}, is {gap:.4f} behind, within one standard deviation over "
            f"seeds ({widest:.4f}): the two are not told apart by this sweep."
        )
    return ""


def _table(rows: list[Setting], keys: list[str]) -> list[str]:
    titles = [*keys, "seeds", *(title for _, title, _ in METRICS), "status", "W&B runs"]
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for row in rows:
        cells = [_short(row.keys[k]) for k in keys] + [str(len(row.jobs))]
        cells += [_cell(row.stats(key), form, len(row.jobs)) for key, _, form in METRICS]
        cells += [row.status, ", ".join(row.wandb_runs) or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _short(value: str) -> str:
    """A swept value as a reader wants it: a searched float to 4 significant digits."""
    try:
        number = float(value)
    except ValueError:
        return value
    return f"{number:.4g}" if len(value) > 6 else value


def _cell(stats: tuple[float, float] | None, form: str, seeds: int = 2) -> str:
    """`mean ± std`; the mean alone for one seed; `-` where the metric does not apply."""
    if stats is None or math.isnan(stats[0]):
        return "-"
    mean, spread = stats
    return f"{mean:{form}}" if seeds < 2 else f"{mean:{form}} ± {spread:{form.lstrip('+')}}"


def _write_csv(path: Path, rows: list[Setting], keys: list[str]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        metrics = [f"{key}_{part}" for key, _, _ in METRICS for part in ("mean", "std")]
        writer.writerow([*keys, "seeds", *metrics, "status", "wandb_runs"])
        for row in rows:
            numbers = []
            for key, _, _ in METRICS:
                stats = row.stats(key)
                numbers += list(stats) if stats else ["", ""]
            wandb = " ".join(row.wandb_runs)
            writer.writerow(
                [*(row.keys[k] for k in keys), len(row.jobs), *numbers, row.status, wandb]
            )
