"""The learning-rate schedule across the whole federation: warmup, then cosine decay.

A client's step k in round r is global step `train.steps_before(r) + k` ((r - 1) *
local_steps + k without a synchronous warm start), so every client follows one schedule
over the run, and a resumed run picks it up where it stopped
(`continual.rewarm` restarts it at each new experience instead).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from flowerbed.config import TrainConfig


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Linear warmup to `cfg.lr`, then cosine decay to `cfg.lr * cfg.min_lr_ratio`."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = max(total_steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / decay_steps, 1.0)
    min_lr = cfg.lr * cfg.min_lr_ratio
    return min_lr + 0.5 * (cfg.lr - min_lr) * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class Schedule:
    """Where a round starts on the schedule, and how long the schedule is."""

    first_step: int
    total_steps: int

    def lr(self, k: int, cfg: TrainConfig) -> float:
        """The learning rate of the round's k-th local step."""
        return lr_at(self.first_step + k, cfg, self.total_steps)
