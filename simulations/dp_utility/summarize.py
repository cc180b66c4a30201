"""The DP utility study's table, from its sweep folder (or the records kept here).

One row per arm (a job's overrides less its seed): the batch, steps and learning rate it
trained with, the noise σ its clients' ledgers hold, the final validation loss (mean ±
sample std over seeds) and its gap to the best arm without DP, the hardest honest bar:
every arm trains on the same tokens (`train.sequences_per_round`).

    uv run python simulations/dp_utility/summarize.py runs/dp_utility \
        --keep simulations/dp_utility/records      # also keep each job's small records
    uv run python simulations/dp_utility/summarize.py simulations/dp_utility/records
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from collections import defaultdict
from pathlib import Path

from flowerbed.tracking.sweep import kept_jobs


def arm_of(job: Path) -> str:
    """The job's overrides without its seed, sweep and experiment: the arm's name."""
    lines = (job / ".hydra" / "overrides.yaml").read_text().splitlines()
    picked = [
        line.removeprefix("- ").replace("=False", "=false").replace("=True", "=true")
        for line in lines
    ]
    kept = [o for o in picked if not o.startswith(("seed=", "sweep=", "experiment="))]
    return " ".join(sorted(kept)) or "DP-SGD as configured"


def job_facts(job: Path) -> dict:
    summary = json.loads((job / "summary.json").read_text())
    config = _yaml(job / "config.yaml")
    sigmas: set[float] = set()
    for ledger in (job / "clients").glob("*/state/privacy_ledger.json"):
        sigmas |= {
            round(e["noise_multiplier"], 3) for e in json.loads(ledger.read_text())["entries"]
        }
    train = config["train"]
    return {
        "arm": arm_of(job),
        "private": config["privacy"]["mode"] != "off",
        "budget": train["sequences_per_round"],
        "batch": train["batch_size"],
        "steps": train["sequences_per_round"] // train["batch_size"],
        "lr": train["lr"],
        "sigma": sigmas,
        "val": summary["final_val_loss"],
    }


def _yaml(path: Path) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)  # type: ignore[return-value]


def keep(folder: Path, dest: Path) -> None:
    """Each job's config, overrides, records and clients' ledgers (never node secrets or
    data): what the table is made from."""
    for job, out in kept_jobs(folder, dest):
        (out / ".hydra").mkdir(parents=True, exist_ok=True)
        for name in ("config.yaml", "metrics.jsonl", "summary.json", ".hydra/overrides.yaml"):
            shutil.copy(job / name, out / name)
        for ledger in (job / "clients").glob("*/state/privacy_ledger.json"):
            target = out / ledger.relative_to(job)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ledger, target)


def table(folder: Path) -> str:
    arms: dict[str, list[dict]] = defaultdict(list)
    for job in sorted(p for p in folder.iterdir() if (p / "summary.json").is_file()):
        if "final_val_loss" not in json.loads((job / "summary.json").read_text()):
            print(f"left out, not completed: {job.name}")
            continue
        facts = job_facts(job)
        arms[facts["arm"]].append(facts)
    means = {arm: statistics.mean(f["val"] for f in jobs) for arm, jobs in arms.items()}
    bars: dict[int, float] = {}  # the best arm without DP at each token budget
    for arm, jobs in arms.items():
        if not jobs[0]["private"]:
            budget = jobs[0]["budget"]
            bars[budget] = min(bars.get(budget, means[arm]), means[arm])
    rows = [
        "| arm | seeds | sequences a round | batch | steps a round | lr | noise σ | final val loss "
        "| vs best no-DP at equal tokens |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    order = sorted(arms, key=lambda a: (arms[a][0]["budget"], arms[a][0]["private"], means[a]))
    for arm in order:
        jobs, first = arms[arm], arms[arm][0]
        bar = bars.get(first["budget"])
        vals = [f["val"] for f in jobs]
        spread = statistics.stdev(vals) if len(vals) > 1 else 0.0
        sigma = ", ".join(f"{s:g}" for s in sorted(set().union(*(f["sigma"] for f in jobs))))
        gap = f"{100 * (means[arm] / bar - 1):+.1f}%" if bar and first["private"] else "-"
        rows.append(
            f"| {arm} | {len(jobs)} | {first['budget']} | {first['batch']} | {first['steps']} | "
            f"{first['lr']:g} | "
            f"{sigma or '-'} | {means[arm]:.3f} ± {spread:.3f} | {gap} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--keep", type=Path, help="copy each job's small records here")
    args = parser.parse_args()
    if args.keep:
        keep(args.folder, args.keep)
    print(table(args.folder))


if __name__ == "__main__":
    main()
