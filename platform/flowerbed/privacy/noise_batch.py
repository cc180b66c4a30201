"""The noise-batch rule: under DP, the largest batch that still leaves enough steps.

Each DP-SGD step adds noise of standard deviation σC to the sum of B clipped gradients,
so the mean gradient carries σC/B: the noise-batch ratio σ/B governs DP training
(Sander et al., ICML'23; McKenna et al., "Scaling laws for DP LMs", 2025; VaultGemma).
At a fixed budget of units trained (tokens) and a fixed ε, a larger batch means fewer
steps, and σ grows far more slowly than B, so σ/B falls almost as 1/B: the noise per
step falls faster than the steps do. The rule takes the largest batch that still leaves
`MIN_STEPS` steps over the client's life, the point past which fewer steps cost more
than less noise gains (measured in simulations/dp_utility/). It needs no accountant, so
the config settles `train.batch_size=auto` with it; `recipe.py` adds the noise.
"""

from __future__ import annotations

MIN_STEPS = 100
"""The fewest steps over a client's life the rule leaves (simulations/dp_utility/: at
120 steps of batch 8, batch 32's 30 steps lost despite 3.6x less noise per step)."""


def batches_weighed(
    drawn: int, min_steps: int = MIN_STEPS, smallest: int = 8, per_round: int | None = None
) -> list[int]:
    """Batches from `smallest` doubling while `drawn` draws over the life still give
    `min_steps` steps (and, with `per_round`, while the batch divides a round's draws)."""
    batches = [smallest]
    while drawn // (batches[-1] * 2) >= min_steps and (
        per_round is None or per_round % (batches[-1] * 2) == 0
    ):
        batches.append(batches[-1] * 2)
    return batches
