"""The plots of a sweep report: privacy against utility, forgetting against replay, and
validation loss over rounds for every setting."""

from __future__ import annotations

from pathlib import Path

from flowerbed.tracking.sweep import Setting

REPLAY_KEY = "continual.replay_fraction"


def plot_sweep(rows: list[Setting], keys: list[str], folder: Path) -> list[Path]:
    """Every plot that the sweep's settings allow; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    made = [_loss_over_rounds(rows, folder / "loss_over_rounds.png")]
    if any(r.stats("epsilon") for r in rows):
        made.append(_privacy_utility(rows, folder / "privacy_utility.png"))
    if REPLAY_KEY in keys and any(r.stats("forgetting") for r in rows):
        made.append(_forgetting(rows, folder / "forgetting_vs_replay.png"))
    return made


def _label(keys: dict[str, str], leave_out: str = "") -> str:
    """The setting a line stands for; empty (no legend entry) when nothing else was swept."""
    return ", ".join(f"{k}={v}" for k, v in keys.items() if k != leave_out)


def _lines(rows: list[Setting], leave_out: str) -> dict[str, list[Setting]]:
    """Settings grouped into one line each: same values for every key but `leave_out`."""
    lines: dict[str, list[Setting]] = {}
    for row in rows:
        lines.setdefault(_label(row.keys, leave_out), []).append(row)
    return lines


def _privacy_utility(rows: list[Setting], path: Path) -> Path:
    """ε spent against final validation loss, one line per replay setting."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    by_replay: dict[str, list[Setting]] = {}
    for row in rows:
        by_replay.setdefault(row.keys.get(REPLAY_KEY, "-"), []).append(row)
    for replay, members in by_replay.items():
        name = f"replay {replay}" if replay != "-" else "DP"
        private = [r for r in members if r.stats("epsilon") and r.stats("final_val_loss")]
        _errorbar(ax, [(r.stats("epsilon")[0], *r.stats("final_val_loss")) for r in private], name)
        for r in members:
            if not r.stats("epsilon") and r.stats("final_val_loss"):
                no_dp = f"replay {replay}, no DP" if replay != "-" else "no DP"
                ax.axhline(r.stats("final_val_loss")[0], linestyle="--", alpha=0.6, label=no_dp)
    ax.set_xlabel("ε spent (worst client, whole life)")
    ax.set_ylabel("final validation loss")
    ax.set_title("privacy against utility (mean ± std over seeds)")
    return _save(fig, ax, path)


def _forgetting(rows: list[Setting], path: Path) -> Path:
    """Forgetting against the replayed share, one line per other setting (e.g. per ε)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    for label, members in _lines(rows, leave_out=REPLAY_KEY).items():
        measured = [r for r in members if r.stats("forgetting")]
        _errorbar(
            ax, [(float(r.keys[REPLAY_KEY]), *r.stats("forgetting")) for r in measured], label
        )
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("replayed share of each batch")
    ax.set_ylabel("forgetting (rise above the best loss)")
    ax.set_title("forgetting against replay (mean ± std over seeds)")
    return _save(fig, ax, path)


def _errorbar(ax, points: list[tuple[float, float, float]], label: str) -> None:
    """One line through (x, mean, std) points, sorted by x, with error bars."""
    if points:
        x, mean, spread = zip(*sorted(points), strict=True)
        ax.errorbar(x, mean, yerr=spread, marker="o", capsize=3, label=label)


def _loss_over_rounds(rows: list[Setting], path: Path) -> Path:
    """Mean validation loss per round over each setting's completed seeds."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    for row in rows:
        curves = [[r["val_loss"] for r in j.records] for j in row.jobs if j.status == "completed"]
        if curves:
            length = min(len(c) for c in curves)
            mean = np.mean([c[:length] for c in curves], axis=0)
            ax.plot(range(1, length + 1), mean, marker=".", label=_label(row.keys))
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("validation loss")
    ax.set_title("validation loss per round (mean over seeds)")
    return _save(fig, ax, path)


def _save(fig, ax, path: Path) -> Path:
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
