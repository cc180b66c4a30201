"""One client's ranks as its trainers see them: which rows of a step are mine, and sums.

A node with several devices trains one client round on N ranks (`client/rank_workers.py`
starts them). Every rank holds the whole model and optimizer (data parallelism: DDP's
algorithm, the gradient all-reduced after each backward pass) and takes a contiguous
share of each step's batch; under unit-level DP a unit's rows stay on one rank, so its
gradient is clipped as one. `Ranks()` is the everyday case, one process, and changes
nothing: the trainers run exactly as they did before ranks existed.
"""

from __future__ import annotations

import torch


class Ranks:
    """One process trains the round: every row is mine, every sum is already whole."""

    rank, world = 0, 1

    def mine(self, batch: torch.Tensor, units: torch.Tensor | None = None):
        return batch, units

    def reduce_sum(self, tensors: list[torch.Tensor]) -> None:
        """Nothing to add."""

    def token_share(self, labels: torch.Tensor) -> torch.Tensor:
        return torch.ones((), device=labels.device)


class ProcessGroupRanks(Ranks):
    """This process is rank `rank` of `world` in torch.distributed's default group."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world

    def mine(
        self, batch: torch.Tensor, units: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """My contiguous share of a step's rows; with `units` (sorted ids from 0) whole units
        only, renumbered from 0. A share may be empty (a small Poisson draw)."""
        if units is None:
            return batch.tensor_split(self.world)[self.rank], None
        count = int(units[-1]) + 1 if len(units) else 0
        owner = units * self.world // max(count, 1)
        rows = (owner == self.rank).nonzero().flatten()
        mine = units[rows]
        return batch[rows], mine - mine[0] if len(mine) else mine

    def reduce_sum(self, tensors: list[torch.Tensor]) -> None:
        """Replace each tensor by its sum over the ranks: one all-reduce of one flat buffer."""
        if not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        torch.distributed.all_reduce(flat)
        for tensor, total in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True):
            tensor.copy_(total.view_as(tensor))

    def token_share(self, labels: torch.Tensor) -> torch.Tensor:
        """My share of the step's targets (labels not -100, after the causal shift): a loss
        averaged over my tokens, times this, sums over the ranks to the step's mean. A
        device scalar, so a step never waits for the host."""
        mine = (labels[:, 1:] != -100).sum().to(torch.float64)
        total = mine.clone()
        torch.distributed.all_reduce(total)
        return (mine / total.clamp(min=1)).float()
