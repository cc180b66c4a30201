"""The robustness study's tables and plots, from its sweep folder (or the records kept here).

For each setting (1 hostile client of 4, 2 of 8), fault kind and combiner: the final
validation loss against the honest run (no fault, plain mean), the replies left out, the
median round time, and whether the final model is finite; a plot of validation loss per
round, one panel per fault kind, one line per combiner.

    uv run python simulations/robustness/summarize.py runs/robustness \\
        --keep simulations/robustness/records
    uv run python simulations/robustness/summarize.py simulations/robustness/records
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from collections import defaultdict
from pathlib import Path

from flowerbed.tracking.sweep import kept_jobs

KINDS = ["none", "non_finite", "scaled", "sign_flip", "wrong_shape", "inflated_examples", "random"]
COMBINERS = ["mean", "trimmed_mean", "median", "krum"]


def settings_of(job: Path) -> dict[str, str]:
    lines = (job / ".hydra" / "overrides.yaml").read_text().splitlines()
    pairs = [line.removeprefix("- ").split("=", 1) for line in lines if "=" in line]
    return {key: value for key, value in pairs}


def outcome(job: Path) -> dict:
    """What one job left: its settings, records and verdicts (kept as `outcome.json`)."""
    kept = job / "outcome.json"
    if kept.is_file():
        return json.loads(kept.read_text())
    settings = settings_of(job)
    summary = json.loads((job / "summary.json").read_text())
    metrics = job / "metrics.jsonl"
    rows = (
        [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    )
    finite = None
    model = job / "final_model" / "model.safetensors"
    if model.is_file():
        import torch
        from safetensors.torch import load_file

        finite = all(bool(torch.isfinite(t).all()) for t in load_file(model).values())
    return {
        "clients": int(settings.get("federation.num_clients", 4)),
        "kind": settings.get("faults.kind", "none"),
        "combiner": settings.get("combiner", "mean"),
        "status": summary.get("status"),
        "error": summary.get("error"),
        "val": [r["val_loss"] for r in rows],
        "final_val": summary.get("final_val_loss"),
        "rejected": sum(len(r["rejected_clients"] or {}) for r in rows),
        "seconds": statistics.median(r["seconds"] for r in rows) if rows else None,
        "finite": finite,
    }


def collect(folder: Path) -> list[dict]:
    return [
        outcome(job)
        for job in sorted(folder.iterdir())
        if (job / "summary.json").is_file() or (job / "outcome.json").is_file()
    ]


def table(jobs: list[dict], clients: int) -> str:
    mine = {(j["kind"], j["combiner"]): j for j in jobs if j["clients"] == clients}
    honest = mine.get(("none", "mean"), {}).get("final_val")
    hostile = "1 hostile client of 4" if clients == 4 else "2 hostile clients of 8"
    rows = [
        f"**{hostile}** (honest run, plain mean: final val loss {honest:.3f})" if honest else "",
        "",
        "| fault | " + " | ".join(COMBINERS) + " |",
        "|---|" + "---|" * len(COMBINERS),
    ]
    for kind in KINDS:
        cells = []
        for combiner in COMBINERS:
            job = mine.get((kind, combiner))
            if job is None:
                cells.append("-")
            elif job["status"] != "completed":
                cells.append("refused at start" if not job["val"] else "failed")
            else:
                gap = f"{100 * (job['final_val'] / honest - 1):+.1f}%" if honest else ""
                left_out = f", {job['rejected']} left out" if job["rejected"] else ""
                finite = "" if job["finite"] is not False else ", NON-FINITE"
                cells.append(f"{job['final_val']:.3f} ({gap}{left_out}{finite})")
        rows.append(f"| {kind} | " + " | ".join(cells) + " |")
    seconds = [j["seconds"] for j in mine.values() if j["seconds"]]
    if seconds:
        rows.append("")
        rows.append(
            "Median round: "
            + ", ".join(
                f"{c} {statistics.median(s):.1f} s"
                for c in COMBINERS
                if (
                    s := [
                        j["seconds"] for j in mine.values() if j["combiner"] == c and j["seconds"]
                    ]
                )
            )
        )
    return "\n".join(rows)


def plot(jobs: list[dict], clients: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(16, 7), dpi=100, sharey=True)
    curves: dict[str, dict[str, list[float]]] = defaultdict(dict)
    for job in jobs:
        if job["clients"] == clients and job["val"]:
            curves[job["kind"]][job["combiner"]] = job["val"]
    for ax, kind in zip(axes.flat, KINDS, strict=False):
        for combiner in COMBINERS:
            if combiner in curves[kind]:
                values = curves[kind][combiner]
                ax.plot(range(1, len(values) + 1), values, marker=".", label=combiner)
        ax.set_title(kind)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes.flat[0].set_ylabel("validation loss")
    axes.flat[-1].axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    axes.flat[-1].legend(handles, labels, loc="center")
    hostile = "1 of 4" if clients == 4 else "2 of 8"
    fig.suptitle(f"validation loss per round, {hostile} clients hostile")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def keep(folder: Path, dest: Path) -> None:
    """Each job's config, overrides, records and verdicts (not its model or data)."""
    for job, out in kept_jobs(folder, dest):
        (out / ".hydra").mkdir(parents=True, exist_ok=True)
        for name in ("config.yaml", "metrics.jsonl", "summary.json", ".hydra/overrides.yaml"):
            if (job / name).is_file():
                shutil.copy(job / name, out / name)
        (out / "outcome.json").write_text(json.dumps(outcome(job)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--keep", type=Path, help="copy each job's small records here")
    args = parser.parse_args()
    if args.keep:
        keep(args.folder, args.keep)
    jobs = collect(args.keep or args.folder)
    target = args.keep or args.folder
    for clients in (4, 8):
        print(table(jobs, clients), end="\n\n")
        plot(jobs, clients, target / f"val_loss_{clients}_clients.png")


if __name__ == "__main__":
    main()
