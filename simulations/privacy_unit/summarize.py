"""The privacy-unit study's table, from its sweep folder (or the records kept here).

For each arm: ε and its unit, the units each client held, the rate a unit was drawn at
per step and the noise that bought ε 8, the tokens the clients actually trained on
(from their own logs: under DP the server sees only the planned count), and the final
validation loss (mean ± sample std over seeds).

    uv run python simulations/privacy_unit/summarize.py runs/privacy_unit \
        --keep simulations/privacy_unit/records      # also keep each job's small records
    uv run python simulations/privacy_unit/summarize.py simulations/privacy_unit/records
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np

from flowerbed.tracking.sweep import kept_jobs


def job_facts(job: Path) -> dict:
    summary = json.loads((job / "summary.json").read_text())
    overrides = (job / ".hydra" / "overrides.yaml").read_text()
    private = "privacy=off" not in overrides
    unit = next(
        (u for u in ("document", "user", "sequence") if f"privacy.unit={u}" in overrides), "-"
    )
    facts = {
        "arm": f"ε 8 per {unit}" if private else "no DP",
        "val": summary["final_val_loss"],
        "epsilon": summary["epsilon_max"],
        "units": [],
        "blocks": [],
        "rate": set(),
        "sigma": set(),
        "tokens": [],
    }
    for client in sorted((job / "clients").iterdir()):
        state = client / "state"
        shard = shard_facts(client, unit)
        facts["blocks"].append(shard["blocks"])
        facts["units"].append(shard["units"])
        log = state / "node_metrics.jsonl"
        if log.is_file():
            rows = [json.loads(line) for line in log.read_text().splitlines()]
            facts["tokens"].append(sum(r["tokens"] for r in rows if r["kind"] == "train"))
        ledger = state / "privacy_ledger.json"
        if ledger.is_file():
            entries = json.loads(ledger.read_text())["entries"]
            facts["rate"] |= {round(e["sample_rate"], 4) for e in entries}
            facts["sigma"] |= {round(e["noise_multiplier"], 3) for e in entries}
    return facts


def shard_facts(client: Path, unit: str) -> dict[str, int]:
    """Training blocks and units of a client's shard (kept in `shard.json` by `--keep`)."""
    kept = client / "shard.json"
    if kept.is_file():
        return json.loads(kept.read_text())
    blocks = np.load(client / "data" / "train.tokens.npy", mmap_mode="r")
    ids = {"document": "documents", "user": "users"}.get(unit)
    units = len(np.unique(np.load(client / "data" / f"train.{ids}.npy"))) if ids else len(blocks)
    return {"blocks": len(blocks), "units": units}


def keep(folder: Path, dest: Path) -> None:
    """Each job's config, overrides, records and clients' ledgers and logs (never the
    node secrets, never the data): what the table is made from."""
    for job, out in kept_jobs(folder, dest):
        (out / ".hydra").mkdir(parents=True, exist_ok=True)
        for name in ("config.yaml", "metrics.jsonl", "summary.json", ".hydra/overrides.yaml"):
            shutil.copy(job / name, out / name)
        unit = job_facts(job)["arm"].split()[-1]
        for client in sorted((job / "clients").iterdir()):
            target = out / "clients" / client.name
            target.mkdir(parents=True, exist_ok=True)
            (target / "shard.json").write_text(json.dumps(shard_facts(client, unit)))
            for name in ("privacy_ledger.json", "node_metrics.jsonl"):
                if (client / "state" / name).is_file():
                    (target / "state").mkdir(exist_ok=True)
                    shutil.copy(client / "state" / name, target / "state" / name)
    for name in ("report.md", "report.csv", "loss_over_rounds.png", "privacy_utility.png"):
        if (folder / name).is_file():
            shutil.copy(folder / name, dest / name)


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def table(folder: Path) -> str:
    arms: dict[str, list[dict]] = defaultdict(list)
    for job in sorted(p for p in folder.iterdir() if (p / "summary.json").is_file()):
        facts = job_facts(job)
        arms[facts["arm"]].append(facts)
    reference = (
        statistics.mean(f["val"] for f in arms.get("no DP", [])) if "no DP" in arms else None
    )
    rows = [
        "| arm | seeds | units per client | training blocks per client | unit drawn per step (q) "
        "| noise σ | tokens trained per client and round | final val loss | vs no DP |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    order = ["no DP", "ε 8 per sequence", "ε 8 per document", "ε 8 per user"]
    for arm in [a for a in order if a in arms]:
        jobs = arms[arm]
        first = jobs[0]
        units = f"{min(first['units']):,} to {max(first['units']):,}"
        blocks = f"{min(first['blocks']):,} to {max(first['blocks']):,}"
        rate = ", ".join(f"{q:g}" for q in sorted(first["rate"])) or "-"
        sigma = ", ".join(f"{s:g}" for s in sorted(first["sigma"])) or "-"
        rounds = 6
        tokens = [t / rounds for f in jobs for t in f["tokens"]]
        tokens_cell = f"{statistics.mean(tokens):,.0f}" if tokens else "-"
        vals = [f["val"] for f in jobs]
        gap = (
            f"{100 * (statistics.mean(vals) / reference - 1):+.0f}%"
            if reference and arm != "no DP"
            else "-"
        )
        rows.append(
            f"| {arm} | {len(jobs)} | {units} | {blocks} | {rate} | {sigma} | {tokens_cell} | "
            f"{mean_std(vals)} | {gap} |"
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
