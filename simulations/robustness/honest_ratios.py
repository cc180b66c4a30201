"""How far apart honest update norms lie within a round: the evidence behind the factor of
`federation.max_update_norm=auto` (docs/robustness.md, "Safe defaults").

Reads each honest run's metrics.jsonl (`update_norms`: every admitted client's update norm,
by round) and prints, per run, the largest over its rounds of max / lower median (what the
auto bound compares) and of max / min (what it compares when a hostile client sends a tiny
update and so pulls the median down to the smallest honest norm).

    uv run python simulations/robustness/honest_ratios.py runs/a runs/b ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def lower_median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


def ratios(run: Path) -> tuple[float, float, float, int]:
    """Over the run's rounds: the largest max/lower-median, max/min, the median norm of
    the first round, and the rounds read."""
    worst_median = worst_min = first = 0.0
    rounds = 0
    for line in (run / "metrics.jsonl").read_text().splitlines():
        norms = list((json.loads(line).get("update_norms") or {}).values())
        if not norms:
            continue
        rounds += 1
        first = first or lower_median(norms)
        worst_median = max(worst_median, max(norms) / lower_median(norms))
        worst_min = max(worst_min, max(norms) / min(norms))
    return worst_median, worst_min, first, rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    print("| run | rounds | round 1 median norm | max / lower median | max / min |")
    print("|---|---|---|---|---|")
    for run in args.runs:
        to_median, to_min, first, rounds = ratios(run)
        print(f"| {run.name} | {rounds} | {first:.3g} | {to_median:.3f} | {to_min:.3f} |")


if __name__ == "__main__":
    main()
