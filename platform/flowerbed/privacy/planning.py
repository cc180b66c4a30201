"""Budget planning: the noise for a client's whole life, and what given settings spend.

Used by the clients (once, when a ledger starts) and by `flowerbed privacy`, so the
numbers a user plans with are the numbers the clients train with.
"""

from __future__ import annotations

from dataclasses import dataclass

from flowerbed.config import PrivacyConfig
from flowerbed.privacy.accounting import epsilon, noise_for_epsilon, noise_for_schedule
from flowerbed.privacy.banded import accounted, accounted_schedule, choose_bands, strategy
from flowerbed.privacy.ledger import LedgerError, PrivacyLedger


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
    bands: int = 1,
) -> Plan:
    """Noise for a target epsilon, or epsilon for a given noise, over rounds x local steps
    (`bands` > 1: the banded mechanism, accounted as its clients' ledgers account it)."""
    q, steps = sample_rate(batch_size, num_records), rounds * local_steps
    rate, participations = accounted(q, local_steps, bands)
    participations *= rounds
    if noise_multiplier is None:
        if target_epsilon is None:
            raise ValueError("give a target epsilon or a noise multiplier")
        noise_multiplier = noise_for_epsilon(
            target_epsilon, delta, rate, participations, accountant
        )
    spent = epsilon([(noise_multiplier, rate, participations)], delta, accountant)
    return Plan(q, steps, noise_multiplier, spent, delta)


def life_noise_multiplier(
    ledger: PrivacyLedger, cfg: PrivacyConfig, planned: list[tuple[float, int]], local_steps: int
) -> float:
    """The client's noise multiplier (and under `privacy.mechanism=banded` its strategy):
    fixed in the ledger by its first release, then read from it; a refused first request
    fixes nothing.

    With `target_epsilon` it is calibrated once for the whole planned life, `planned`
    being (sample rate, steps) for every round of every experience, never per round:
    per-round calibration would spend the target each round.
    """
    if ledger.noise_multiplier is not None:
        if ledger.mechanism != cfg.mechanism:
            raise LedgerError(
                f"this node's privacy ledger was started with privacy.mechanism="
                f"{ledger.mechanism}, which is fixed for a client's life: set it again"
            )
        return ledger.noise_multiplier
    steps = sum(n for _, n in planned)
    bands = cfg.bands if cfg.mechanism == "banded" else 1
    if bands == "auto":
        assert cfg.target_epsilon is not None  # the config refuses auto without a target
        args = (cfg.target_epsilon, cfg.delta, cfg.accountant)
        bands, sigma, coefficients = choose_bands(planned, local_steps, *args)
    else:
        coefficients = strategy(bands, steps)
        sigma = cfg.noise_multiplier or noise_for_schedule(
            cfg.target_epsilon, cfg.delta, accounted_schedule(planned, bands), cfg.accountant
        )
    ledger.noise_multiplier, ledger.planned_steps = sigma, steps
    ledger.mechanism, ledger.coefficients = cfg.mechanism, coefficients
    return sigma
