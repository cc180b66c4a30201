"""Plots a person reads after a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_losses(records: list[dict[str, Any]], initial_val_loss: float | None, path: Path) -> None:
    """Validation (and train / held-out) loss per round, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rounds = [r["round"] for r in records]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    val_rounds = ([0] if initial_val_loss is not None else []) + rounds
    val = ([initial_val_loss] if initial_val_loss is not None else []) + [
        r["val_loss"] for r in records
    ]
    ax.plot(val_rounds, val, marker="o", label="validation (server)")
    for key, marker, label in (
        ("train_loss", ".", "train (clients)"),
        ("heldout_loss", "x", "held-out (clients)"),
    ):  # either is absent where the clients' policy withholds it
        points = [(r["round"], r[key]) for r in records if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker=marker, label=label)
    _mark_experiences(ax, records)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title("flowerbed: loss per round")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _mark_experiences(ax, records: list[dict[str, Any]]) -> None:
    """A dotted line before each round in which a new continual experience arrived."""
    seen = 0
    for r in records:
        experience = r.get("experience")
        if experience is not None and experience > seen:
            ax.axvline(r["round"] - 0.5, color="grey", linestyle=":", linewidth=1)
            ax.annotate(f"experience {experience}", (r["round"] - 0.5, 1), xycoords=("data",
                        "axes fraction"), rotation=90, va="top", ha="right", fontsize="x-small",
                        color="grey")  # fmt: skip
            seen = experience


def plot_epsilon(
    records: list[dict[str, Any]],
    path: Path,
    target: float | None = None,
    delta: float | None = None,
) -> None:
    """The federation ledger: each client's lifetime epsilon per round, the worst case, and
    the target the noise was calibrated for (clients with the same shard size and plan
    spend the same ε, so their lines lie on each other: the markers tell them apart)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    clients = sorted({c for r in records for c in (r.get("client_epsilon") or {})}, key=int)
    markers = "os^vD<>p*h"
    for i, client in enumerate(clients):
        points = [
            (r["round"], r["client_epsilon"][client])
            for r in records
            if client in (r.get("client_epsilon") or {})
        ]
        ax.plot(*zip(*points, strict=True), marker=markers[i % len(markers)], markersize=4,
                linewidth=0.8, alpha=0.7, label=f"client {client}")  # fmt: skip
    worst = [(r["round"], r["epsilon_max"]) for r in records if r.get("epsilon_max") is not None]
    ax.plot(*zip(*worst, strict=True), color="black", linewidth=2, label="worst case")
    if target is not None:
        ax.axhline(target, color="red", linestyle="--", linewidth=1, label=f"target ε {target:g}")
    top = max([target or 0.0, *(e for _, e in worst)])
    ax.set_ylim(0, top * 1.1 if top > 0 else 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("lifetime ε" + (f" (δ = {delta:g})" if delta is not None else ""))
    ax.set_title("flowerbed: privacy spent per client, over its whole life")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_loss_matrix(matrix: list[list[float | None]], path: Path, title: str = "") -> None:
    """The continual loss matrix as a heat map: rows trained, columns evaluated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    values = np.array([[np.nan if v is None else v for v in row] for row in matrix])
    size = len(values)
    fig, ax = plt.subplots(figsize=(1.2 * size + 2.5, 1.0 * size + 1.8), dpi=120)
    image = ax.imshow(values, cmap="viridis_r")
    middle = np.nanmean(values)
    for i in range(size):
        for j in range(size):
            if not np.isnan(values[i, j]):
                color = "black" if values[i, j] < middle else "white"  # readable on light cells
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", color=color)
    ax.set_xticks(range(size))
    ax.set_yticks(range(size))
    ax.set_xlabel("experience evaluated")
    ax.set_ylabel("after training experience")
    ax.set_title(title or "flowerbed: held-out loss matrix")
    fig.colorbar(image, ax=ax, label="loss (nats per token)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
