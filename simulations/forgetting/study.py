"""The forgetting study: naive, replay at 1/5/25%, and cumulative, with and without DP.

Each run is a real simulated federation composed from conf/ (the experiments
`synthetic_continual` and `stdlib_continual`), so every row can be re-run alone with
`flowerbed simulate experiment=<corpus>_continual continual=<mode> ...`. Writes
`results.md` (the table), `results.json` and one loss-matrix heat map per run.

    uv run python simulations/forgetting/study.py --out simulations/forgetting
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

from flowerbed.config import compose_config
from flowerbed.run.simulation import simulate

ARMS = [
    ("naive", ["continual=naive"]),
    ("replay 1%", ["continual=replay", "continual.replay_fraction=0.01"]),
    ("replay 5%", ["continual=replay", "continual.replay_fraction=0.05"]),
    ("replay 25%", ["continual=replay", "continual.replay_fraction=0.25"]),
    ("cumulative", ["continual=cumulative"]),
]
PRIVACY = {"off": [], "dp": ["privacy=dp_sgd", "privacy.target_epsilon=8"]}


def run_arm(corpus: str, privacy: str, overrides: list[str], work: Path) -> dict:
    full = [f"experiment={corpus}_continual", *overrides, *PRIVACY[privacy]]
    cfg = compose_config(*full)
    run_dir = work / f"{corpus}-{privacy}-{'_'.join(o.split('=')[-1] for o in overrides)}"
    shutil.rmtree(run_dir, ignore_errors=True)
    started = time.perf_counter()
    summary = simulate(cfg, run_dir)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        "command": "flowerbed simulate " + " ".join(full),
        "run_dir": str(run_dir),
        "wall_seconds": time.perf_counter() - started,
        "train_seconds": sum(r["client_train_seconds"] for r in records),
        "tokens": summary["total_tokens"],
        "final_val_loss": summary["final_val_loss"],
        "epsilon_max": summary["epsilon_max"],
        **summary["continual"],
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| corpus | DP | arm | avg loss (seen) | forgetting | BWT | forgetting vs naive "
        "| tokens trained | client train s | val loss | ε max |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        naive = next(
            r
            for r in rows
            if (r["corpus"], r["privacy"], r["arm"]) == (row["corpus"], row["privacy"], "naive")
        )
        cut = (
            f"{1 - row['forgetting'] / naive['forgetting']:.0%} less"
            if naive["forgetting"] > 0
            else "n/a (naive did not forget)"
        )
        eps = f"{row['epsilon_max']:.2f}" if row["epsilon_max"] is not None else "-"
        lines.append(
            f"| {row['corpus']} | {row['privacy']} | {row['arm']} | {row['average_loss']:.3f} "
            f"| {row['forgetting']:+.3f} | {row['backward_transfer']:+.3f} | {cut} "
            f"| {row['tokens']:,} | {row['train_seconds']:.1f} "
            f"| {row['final_val_loss']:.3f} | {eps} |"
        )
    return "\n".join(lines)


def render(results: Path) -> None:
    """Write results.md again from results.json (after a change to the table's format)."""
    rows = json.loads(results.read_text())
    (results.parent / "results.md").write_text(table(rows) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("simulations/forgetting"))
    parser.add_argument("--work", type=Path, default=Path("runs/forgetting-study"))
    parser.add_argument("--corpora", nargs="+", default=["synthetic", "stdlib"])
    parser.add_argument("--privacy", nargs="+", default=["off", "dp"], choices=list(PRIVACY))
    parser.add_argument(
        "--render", action="store_true", help="only rewrite results.md from results.json"
    )
    args = parser.parse_args()
    if args.render:
        render(args.out / "results.json")
        return
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("flowerbed").setLevel(logging.INFO)
    heatmaps = args.out / "heatmaps"
    heatmaps.mkdir(parents=True, exist_ok=True)
    rows = []
    for corpus in args.corpora:
        for privacy in args.privacy:
            for arm, overrides in ARMS:
                print(f"== {corpus} | DP {privacy} | {arm}", flush=True)
                row = {"corpus": corpus, "privacy": privacy, "arm": arm}
                row |= run_arm(corpus, privacy, overrides, args.work)
                name = f"{corpus}-{privacy}-{arm.replace(' ', '').replace('%', 'pct')}.png"
                shutil.copy(Path(row["run_dir"]) / "loss_matrix.png", heatmaps / name)
                rows.append(row)
                (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
                (args.out / "results.md").write_text(table(rows) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
