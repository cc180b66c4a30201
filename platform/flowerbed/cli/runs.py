"""`flowerbed runs [DIR]`: every run under DIR, how it ended, how far it got.

A run is a folder with the config.yaml `flowerbed simulate` (or `deploy prepare`) wrote;
its summary.json says how it ended. A folder without one never finished a round's
bookkeeping: it crashed, or runs still.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

COLUMNS = ("run", "status", "rounds", "final val loss", "max ε")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="flowerbed runs", description=__doc__)
    parser.add_argument("folder", type=Path, nargs="?", default=Path("runs"))
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        sys.exit(f"flowerbed runs: no folder {args.folder} (runs go under ./runs by default)")
    rows = [row(run, args.folder) for run in sorted(runs_under(args.folder))]
    if not rows:
        print(f"no runs under {args.folder}")
        return
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(COLUMNS)]
    for line in (COLUMNS, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))


def runs_under(folder: Path) -> list[Path]:
    """Run folders under `folder`: those holding a run's config.yaml (not Hydra's copy)."""
    return [p.parent for p in folder.rglob("config.yaml") if p.parent.name != ".hydra"]


def row(run: Path, folder: Path) -> tuple[str, ...]:
    """One run's line: its path under `folder`, status, rounds, final loss and largest ε."""
    name = str(run.relative_to(folder))
    path = run / "summary.json"
    if not path.is_file():
        return name, "no summary (crashed, or running)", "-", "-", "-"
    from flowerbed.server.summary import RunSummary

    try:
        summary = RunSummary.read(path)
    except (ValueError, TypeError):
        return name, "unreadable summary.json", "-", "-", "-"
    loss, epsilon = summary.final_val_loss, summary.epsilon_max
    return (
        name,
        summary.status,
        str(summary.rounds),
        "-" if loss is None else f"{loss:.4f}",
        "-" if epsilon is None else f"{epsilon:.2f}",
    )
