"""Federated pretraining against centralized training: the table and the plot.

Reads the jobs of `flowerbed simulate -m sweep=pretraining ...` (see
conf/sweep/pretraining.yaml for the three commands) and writes, next to them or where
`--out` says, `comparison.md` and `val_loss_vs_tokens.png`. An arm is a model, a
strategy, a partition, a communication interval (local steps between syncs), the inner
and outer learning rates and momentum, and the synchronous warm start; a job with one
client is centralized training, and every gap is measured against the best centralized
arm (over its learning rates) of the same model and tokens. Seeds are aggregated as
mean ± sample standard deviation.

    uv run python simulations/pretraining/compare.py runs/pretraining
    uv run python simulations/pretraining/compare.py runs/pretraining_regime \
        --keep simulations/pretraining/regime/records --out simulations/pretraining/regime

`--keep` copies each job's config, overrides and records into the repository first (the
sweep folder under `runs/` is not kept) and reads them from there.
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from flowerbed.tracking.sweep import Setting, SweepJob, kept_jobs, read_jobs


@dataclass
class Arm:
    """One model x strategy x partition x interval x learning rates, over its seeds."""

    model: str
    strategy: str
    partition: str
    local_steps: int
    clients: int
    batch_size: int
    keeps_inner_state: bool
    outer_lr: float
    outer_momentum: float
    lr: float
    sync_rounds: int
    jobs: list[SweepJob] = field(default_factory=list)

    @property
    def centralized(self) -> bool:
        return self.clients == 1

    @property
    def name(self) -> str:
        lr = f"lr {self.lr:g}"
        if self.centralized:
            steps = self.syncs * self.local_steps
            return f"{self.model}: centralized, batch {self.batch_size}, {steps} steps, {lr}"
        warm = f", {self.sync_rounds} synchronous steps first" if self.sync_rounds else ""
        return f"{self.model}: {self.label}, {self.partition}, H={self.local_steps}, {lr}{warm}"

    @property
    def label(self) -> str:
        """The strategy, whether clients keep AdamW where the strategy does not say so, and
        the server's step where it has one."""
        if self.keeps_inner_state and self.strategy != "diloco":
            return f"{self.strategy} + kept AdamW"
        if self.strategy in ("diloco", "fedadam", "fedavgm"):
            momentum = f" m {self.outer_momentum:g}" if self.strategy != "fedadam" else ""
            return f"{self.strategy} lr {self.outer_lr:g}{momentum}"
        return self.strategy

    @property
    def val_loss(self) -> tuple[float, float]:
        """Final validation loss: mean and standard deviation over seeds."""
        return Setting({}, self.jobs).stats("final_val_loss")

    @property
    def syncs(self) -> int:
        return len(self.jobs[0].records)

    @property
    def outer_steps(self) -> int:
        """Rounds that took the outer step (the warm start's rounds do not)."""
        return self.syncs - self.sync_rounds

    @property
    def tokens(self) -> int:
        return sum(r["tokens"] for r in self.jobs[0].records)

    @property
    def bytes_per_client(self) -> int:
        """What one client sends over the run (it receives as much)."""
        return sum(r["bytes_per_client"] for r in self.jobs[0].records)


def arms(jobs: list[SweepJob]) -> list[Arm]:
    """The completed jobs grouped by arm, centralized first."""
    grouped: dict[tuple, Arm] = {}
    for job in jobs:
        if job.status != "completed":
            continue
        cfg = yaml.safe_load((job.folder / "config.yaml").read_text())
        key = (
            cfg["model"]["preset"],
            cfg["strategy"]["name"],
            cfg["data"]["partition"],
            cfg["train"]["local_steps"],
            cfg["federation"]["num_clients"],
            cfg["train"]["batch_size"],
            cfg["strategy"]["keep_inner_state"],
            cfg["strategy"]["outer_lr"],
            cfg["strategy"]["outer_momentum"],
            cfg["train"]["lr"],
            cfg["train"].get("sync_rounds", 0),
        )
        grouped.setdefault(key, Arm(*key)).jobs.append(job)
    return sorted(
        grouped.values(),
        key=lambda a: (
            a.model != "tiny",
            a.model,
            not a.centralized,
            -a.batch_size,
            a.local_steps,
            a.partition,
            a.label,
            a.lr,
            a.sync_rounds,
        ),
    )


def references(arm: Arm, rows: list[Arm]) -> list[Arm | None]:
    """The centralized arms `arm` is measured against, of its model and tokens, each the
    best over its learning rates (the lowest mean, so the hardest bar): at the largest
    batch (the same global batch and sequential steps as 4 clients) and at the smallest
    (a client's batch, 4x the steps)."""
    same = [a for a in rows if a.centralized and a.tokens == arm.tokens and a.model == arm.model]
    if not same:
        return [None, None]
    batches = sorted({a.batch_size for a in same})

    def best(batch: int) -> Arm:
        return min((a for a in same if a.batch_size == batch), key=lambda a: a.val_loss[0])

    return [best(batches[-1]), best(batches[0]) if len(batches) > 1 else None]


def table(rows: list[Arm]) -> list[str]:
    """One row per arm, with its gaps to centralized training at equal tokens."""
    gaps = ["gap to centralized, same sequential steps", "gap to centralized, batch 8"]
    lines = [
        "| arm | seeds | val loss | val ppl | " + " | ".join(gaps) + " | outer steps | syncs "
        "| tokens | MB sent per client |",
        "|---|---|---|---|" + "---|" * len(gaps) + "---|---|---|---|",
    ]
    for arm in rows:
        loss, spread = arm.val_loss
        cell = f"{loss:.4f}" + (f" ± {spread:.4f}" if len(arm.jobs) > 1 else "")
        gap = [
            "-" if ref is None or ref is arm else f"{100 * (loss / ref.val_loss[0] - 1):+.1f}%"
            for ref in references(arm, rows)
        ]
        lines.append(
            f"| {arm.name} | {len(arm.jobs)} | {cell} | {math.exp(loss):.1f} | "
            + " | ".join(gap)
            + (
                f" | - | - | {arm.tokens:,} | - |"  # one process: nothing travels
                if arm.centralized
                else f" | {arm.outer_steps} | {arm.syncs} | {arm.tokens:,} "
                f"| {arm.bytes_per_client / 1e6:,.0f} |"
            )
        )
    return lines


def best_lr(rows: list[Arm]) -> list[Arm]:
    """Of arms that differ only in their inner learning rate, the one that ended lowest
    among those with the most seeds."""
    best: dict[tuple, Arm] = {}
    for arm in rows:
        key = (arm.model, arm.name.replace(f"lr {arm.lr:g}", ""), arm.tokens)
        rank = (-len(arm.jobs), arm.val_loss[0])
        if key not in best or rank < (-len(best[key].jobs), best[key].val_loss[0]):
            best[key] = arm
    return list(best.values())


def plot(rows: list[Arm], path: Path) -> None:
    """Validation loss against tokens trained, each arm at its best inner learning rate:
    one panel per model and partition, centralized training in each of its model's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = best_lr(rows)
    panels = sorted({(a.model != "tiny", a.model, a.partition) for a in rows if not a.centralized})
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 9), dpi=110, squeeze=False)
    colours = {"fedavg": "tab:blue", "fedavg + kept AdamW": "tab:purple"}
    for ax, (_, model, partition) in zip(axes[0], panels, strict=True):
        for arm in rows:
            if arm.model != model or (not arm.centralized and arm.partition != partition):
                continue
            records = arm.jobs[0].records
            tokens = [sum(r["tokens"] for r in records[: i + 1]) for i in range(len(records))]
            losses = [
                statistics.fmean(j.records[i]["val_loss"] for j in arm.jobs)
                for i in range(len(records))
            ]
            style = {
                "color": "black" if arm.centralized else colours.get(arm.label),
                "linestyle": ":" if arm.batch_size > 8 else "-" if arm.local_steps > 10 else "--",
                "marker": "o" if not arm.centralized and arm.local_steps > 10 else None,
                "markersize": 2,
            }
            ax.plot(tokens, losses, label=arm.name.removeprefix(f"{model}: "), **style)
        ax.set_title(f"{model}, 4 clients, {partition} (centralized: one client)")
        ax.set_xlabel("tokens trained (all clients)")
        ax.set_ylabel("validation loss")
        ax.set_xscale("log")
        ax.set_xlim(left=5e4)
        ax.set_ylim(top=min(ax.get_ylim()[1], 3.0))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.08))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def keep(folder: Path, dest: Path) -> None:
    """Each job's config, overrides, round records and summary: what the table is made of."""
    for job, kept in kept_jobs(folder, dest):
        (kept / ".hydra").mkdir(parents=True, exist_ok=True)
        for name in ("config.yaml", "metrics.jsonl", "summary.json", ".hydra/overrides.yaml"):
            shutil.copy(job / name, kept / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--out", type=Path, help="default: the sweep folder")
    parser.add_argument("--keep", type=Path, help="copy the jobs' records here, read them there")
    args = parser.parse_args()
    out = args.out or args.sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    if args.keep:
        keep(args.sweep_dir, args.keep)
    rows = arms(read_jobs(args.keep or args.sweep_dir))
    plot(rows, out / "val_loss_vs_tokens.png")
    text = [
        "# Federated pretraining against centralized training",
        "",
        f"From `{args.keep or args.sweep_dir}`; final validation loss after equal tokens.",
        "",
        *table(rows),
        "",
        "![validation loss against tokens](val_loss_vs_tokens.png)",
    ]
    (out / "comparison.md").write_text("\n".join(text) + "\n")
    print("\n".join(table(rows)))


if __name__ == "__main__":
    main()
