"""`flowerbed report <sweep dir>`: the sweep's report.md, report.csv and plots, again."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="flowerbed report", description=__doc__)
    parser.add_argument("sweep_dir", type=Path, help="a `flowerbed simulate -m` output folder")
    parser.add_argument(
        "--max-epsilon",
        type=float,
        help="the budget for the best setting: every seed's ε at most this (default: any)",
    )
    args = parser.parse_args(argv)
    from flowerbed.tracking.report import write_report

    try:
        report = write_report(args.sweep_dir, args.max_epsilon)
    except FileNotFoundError as err:
        sys.exit(f"flowerbed report: {err}")
    print(f"wrote {report.markdown}, {report.csv.name} and {len(report.plots)} plot(s)")
    for line in report.failed_jobs:
        print(f"  {line}")
