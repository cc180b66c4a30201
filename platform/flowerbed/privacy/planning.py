"""Budget planning: the noise for a client's whole life, and what given settings spend.

Used by the clients (once, when a ledger starts) and by `flowerbed privacy`, so the
numbers a user plans with are the numbers the clients train with.
"""

from __future__ import annotations

from dataclasses import dataclass

from flowerbed.config import PrivacyConfig
from flowerbed.privacy.accounting import epsilon, noise_for_epsilon, noise_for_schedule
from flowerbed.privacy.ledger import PrivacyLedger


@dataclass
class Plan:
    sample_rate: float
    steps: int
    noise_multiplier: float
    epsilon: float
    delta: float


def sample_rate(batch_size: int, num_records: int) -> float:
    """Poisson rate giving `batch_size` expected sequences per step (at most 1)."""
    return min(1.0, batch_size / num_records)


def plan(
    num_records: int,
    batch_size: int,
    rounds: int,
    local_steps: int,
    delta: float,
    accountant: str = "prv",
    target_epsilon: float | None = None,
    noise_multiplier: float | None = None,
) -> Plan:
    """Noise for a target epsilon, or epsilon for a given noise, over rounds x local steps."""
    q, steps = sample_rate(batch_size, num_records), rounds * local_steps
    if noise_multiplier is None:
        if target_epsilon is None:
            raise ValueError("give a target epsilon or a noise multiplier")
        noise_multiplier = noise_for_epsilon(target_epsilon, delta, q, steps, accountant)
    spent = epsilon([(noise_multiplier, q, steps)], delta, accountant)
    return Plan(q, steps, noise_multiplier, spent, delta)


def life_noise_multiplier(
    ledger: PrivacyLedger, cfg: PrivacyConfig, planned: list[tuple[float, int]]
) -> float:
    """The client's noise multiplier: fixed (in the ledger) by its first release, then read
    from it; a refused first request fixes nothing.

    With `target_epsilon` it is calibrated once for the whole planned life, `planned`
    being (sample rate, steps) for every round of every experience, never per round:
    per-round calibration would spend the target each round.
    """
    if ledger.noise_multiplier is None:
        ledger.noise_multiplier = cfg.noise_multiplier or noise_for_schedule(
            cfg.target_epsilon, cfg.delta, planned, cfg.accountant
        )
        ledger.planned_steps = sum(steps for _, steps in planned)
    return ledger.noise_multiplier
