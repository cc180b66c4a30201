"""The loss matrix and what it says about forgetting, from the rounds' records.

R[i][j] is the held-out loss on experience j after the federation trained experience i
(its last round), for j <= i; the current round stands in for the experience still
being trained. With T rows, over the old experiences j < T-1:
- forgetting: mean of R[T-1][j] - min(R[j..T-2][j]), the rise above the best loss seen;
- backward transfer: mean of R[j][j] - R[T-1][j] (positive: later training helped);
- average loss: mean of R[T-1][j] over every experience seen.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass
class ContinualMetrics:
    loss_matrix: list[list[float | None]]
    """Rows: the experience trained; columns: the experience evaluated (None: not seen)."""
    average_loss: float
    forgetting: float | None
    backward_transfer: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def merge_client_losses(
    replies: list[tuple[list[float], list[int]]],
) -> tuple[int, dict[int, float]]:
    """The newest experience any client reports and the loss per experience across clients.

    Each reply is (losses, held-out sizes), one entry per experience the client has seen;
    losses are weighted by held-out size, so clients may have seen more or fewer
    experiences than others.
    """
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    for losses, sizes in replies:
        for j, (loss, size) in enumerate(zip(losses, sizes, strict=True)):
            sums[j] = sums.get(j, 0.0) + float(loss) * int(size)
            counts[j] = counts.get(j, 0) + int(size)
    losses = {j: sums[j] / counts[j] for j in sorted(sums)}
    return max(losses, default=0), losses


def loss_matrix(rounds: list[tuple[int, dict[str, float]]]) -> np.ndarray:
    """R from the rounds' (newest experience, loss per experience): NaN where not seen.

    Row i is the last round that trained experience i; the newest round is the last row.
    """
    rows: dict[int, dict[str, float]] = {}
    for experience, losses in rounds:
        rows[int(experience)] = losses
    size = max(rows, default=-1) + 1
    matrix = np.full((size, size), np.nan)
    for i, losses in rows.items():
        for j, loss in losses.items():
            if int(j) <= i:
                matrix[i, int(j)] = loss
    return matrix


def continual_metrics(matrix: np.ndarray) -> ContinualMetrics:
    last = matrix.shape[0] - 1
    final = matrix[last]
    old = [j for j in range(last) if not np.isnan(final[j])]
    forgetting = bwt = None
    if old:
        best = [np.nanmin(matrix[j:last, j]) for j in old]
        forgetting = float(np.mean([final[j] - b for j, b in zip(old, best, strict=True)]))
        bwt = float(np.mean([matrix[j, j] - final[j] for j in old]))
    return ContinualMetrics(
        loss_matrix=[[None if np.isnan(v) else float(v) for v in row] for row in matrix],
        average_loss=float(np.nanmean(final)),
        forgetting=forgetting,
        backward_transfer=bwt,
    )
