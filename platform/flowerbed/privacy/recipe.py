"""The noise-batch recipe: the batch and steps that spend a token budget best under DP.

Each DP-SGD step adds noise of standard deviation σC to the sum of B clipped gradients,
so the mean gradient carries σC/B: the noise-batch ratio σ/B governs DP training
(Sander et al., ICML'23; McKenna et al., "Scaling laws for DP LMs", 2025; VaultGemma).
At a fixed budget of units trained (tokens) and a fixed ε, a larger batch means fewer
steps, and σ grows far more slowly than B, so σ/B falls almost as 1/B: the noise per
step falls faster than the steps do. The recipe takes the largest batch that still
leaves `min_steps` steps over the client's life, the point past which fewer steps cost
more than less noise gains (measured in simulations/dp_utility/).
"""

from __future__ import annotations

from dataclasses import dataclass

from flowerbed.privacy.planning import Plan, plan

MIN_STEPS = 100
"""The fewest steps over a client's life the recipe leaves (simulations/dp_utility/: at
120 steps of batch 8, batch 32's 30 steps lost despite 3.6x less noise per step)."""


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
    batches = [smallest_batch]
    while batches[-1] * 2 <= units and drawn // (batches[-1] * 2) >= min_steps:
        batches.append(batches[-1] * 2)
    candidates = [
        (batch, plan(units, batch, 1, drawn // batch, delta, accountant, target_epsilon))
        for batch in batches[-shown:]
    ]
    batch, chosen = min(candidates, key=lambda c: c[1].noise_multiplier / c[0])
    return Recipe(chosen, batch, candidates)
