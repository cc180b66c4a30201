"""The noise-batch recipe: the batch, steps and noise that spend a token budget best
under DP (`noise_batch.py` states the rule and its sources; here the noise is added).
"""

from __future__ import annotations

from dataclasses import dataclass

from flowerbed.privacy.noise_batch import MIN_STEPS, batches_weighed
from flowerbed.privacy.planning import Plan, plan


@dataclass
class Recipe:
    chosen: Plan
    batch_size: int
    candidates: list[tuple[int, Plan]]
    """(batch, plan) for the largest batches weighed, smallest first."""

    @property
    def noise_batch_ratio(self) -> float:
        return self.chosen.noise_multiplier / self.batch_size


def recommend(
    units: int,
    drawn: int,
    target_epsilon: float,
    delta: float,
    accountant: str = "prv",
    min_steps: int = MIN_STEPS,
    smallest_batch: int = 8,
    shown: int = 4,
) -> Recipe:
    """The batch (expected units a step) and steps spending `drawn` unit draws over a
    client's life, holding `units`, within `target_epsilon`.

    Batches from `smallest_batch` doubling up to the most that leaves `min_steps`
    steps; the one with the lowest σ/B is chosen (the largest, as σ/B falls with B).
    Only the `shown` largest are calibrated: a small batch's millions of steps take the
    accountant minutes, and σ/B only rises as the batch halves.
    """
    if drawn < smallest_batch * min_steps:
        raise ValueError(
            f"{drawn} unit draws over the client's life cannot give {min_steps} steps of "
            f"{smallest_batch} units: train more tokens, or lower the minimum steps"
        )
    if smallest_batch > units:
        raise ValueError(
            f"a batch of {smallest_batch} is more than the {units} units the client holds"
        )
    batches = [b for b in batches_weighed(drawn, min_steps, smallest_batch) if b <= units]
    candidates = [
        (batch, plan(units, batch, 1, drawn // batch, delta, accountant, target_epsilon))
        for batch in batches[-shown:]
    ]
    batch, chosen = min(candidates, key=lambda c: c[1].noise_multiplier / c[0])
    return Recipe(chosen, batch, candidates)
