"""Correlated noise by a banded matrix mechanism (BandMF) with cyclic Poisson sampling.

DP-SGD adds independent noise every step, so the model (the running sum of the steps)
carries the sum of all of it. A matrix mechanism adds noise `C⁻¹z` instead: step t's
noise is fresh Gaussian noise minus a weighted sum of the noise of the `bands - 1` steps
before it, which cancels much of the noise in the running sum (`correlated_noise.py`
applies it). The strategy C is a lower-triangular Toeplitz matrix with `bands`
coefficients, optimised by jax-privacy for the prefix-sum workload of the client's
planned life and normalised to norm 1.

Privacy (Choquette-Choo et al., "(Amplified) Banded Matrix Factorization", NeurIPS 2023,
arXiv 2306.08153, Theorem 4): the client's records are split into `bands` classes (a
fixed keyed hash of each record, `cyclic.py`); step t samples only class t mod `bands`,
each of its records with probability `bands * q`, so the expected batch is unchanged.
Every record can then take part at most once in any `bands` consecutive steps, and the
mechanism is exactly as private as DP-SGD at rate `bands * q` over `steps / bands`
steps with the same noise multiplier. The ledger records those (rate, steps), so the
lifetime ε, its calibration, the budget check and the planner are DP-SGD's own
accountant; `tests/test_banded.py` checks it against jax-privacy's accountant for cyclic
Poisson sampling. `bands = 1` is DP-SGD itself, to the bit.

jax-privacy (JAX) is imported here only, once per client life, to optimise the
coefficients; nothing in PyTorch or Opacus provides them (Opacus issue #393).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

from flowerbed.privacy.accounting import noise_for_schedule

Schedule = list[tuple[float, int]]


class BandsError(ValueError):
    """The bands cannot divide the client's steps; the message says which to change."""


def accounted(rate: float, steps: int, bands: int) -> tuple[float, int]:
    """What `steps` banded steps at Poisson rate `rate` cost, as DP-SGD (rate, steps)."""
    if steps % bands:
        raise BandsError(
            f"{steps} local steps are not a multiple of privacy.bands={bands}: every record "
            "must wait `bands` steps between two chances to be sampled; choose bands that "
            "divide train.local_steps"
        )
    return min(1.0, bands * rate), steps // bands


def accounted_schedule(planned: Schedule, bands: int) -> Schedule:
    return [accounted(rate, steps, bands) for rate, steps in planned]


def strategy(bands: int, steps: int) -> list[float]:
    """The banded Toeplitz strategy's coefficients (norm 1) for `steps` planned steps."""
    if bands == 1:
        return [1.0]
    import jax

    jax.config.update("jax_enable_x64", True)
    with warnings.catch_warnings():  # jax on a machine without accelerators says so
        warnings.simplefilter("ignore")
        from jax_privacy.matrix_factorization import toeplitz

        coefficients = toeplitz.optimize_banded_toeplitz(n=max(steps, bands), bands=bands)
    return [float(c) for c in np.asarray(coefficients)]


def prefix_error(coefficients: Sequence[float], steps: int) -> float:
    """Mean squared error of the running sums of `C⁻¹z` over `steps` steps, per unit of
    noise variance (DP-SGD's is (steps + 1) / 2): what the strategy is chosen to lower."""
    inverse = inverse_coefficients(coefficients, steps)
    running = np.cumsum(inverse)  # the noise of the sum up to t, as weights of z
    per_step = np.cumsum(running**2)  # sum t's variance: every z it has seen
    return float(per_step.mean())


def inverse_coefficients(coefficients: Sequence[float], steps: int) -> np.ndarray:
    """The first `steps` coefficients of C⁻¹ (lower-triangular Toeplitz as well).

    jax-privacy's `toeplitz.inverse_coef` computes the same; this is numpy because every
    round's trainer needs it (`noise_scale`), and a deployed ClientApp lives for one
    Message: importing jax there would cost every round seconds."""
    c = np.asarray(coefficients, dtype=np.float64)
    d = np.zeros(steps)
    for t in range(steps):
        past = sum(c[j] * d[t - j] for j in range(1, min(t, len(c) - 1) + 1))
        d[t] = ((1.0 if t == 0 else 0.0) - past) / c[0]
    return d


def noise_scale(coefficients: Sequence[float], steps: int = 4096) -> float:
    """How much larger each step's noise is than DP-SGD's at the same multiplier, once
    the buffers are full: the norm of a row of C⁻¹ (1 for DP-SGD)."""
    return float(np.linalg.norm(inverse_coefficients(coefficients, steps)))


def choose_bands(
    planned: Schedule, local_steps: int, target_epsilon: float, delta: float, accountant: str
) -> tuple[int, float, list[float]]:
    """The bands, noise multiplier and coefficients with the least noise in the running
    sums (`prefix_error` times σ²) that reach `target_epsilon` over the planned life.

    More bands correlate more steps' noise but sample each record at a higher rate, so
    each needs more noise: jax-privacy's `optimize_coefs_for_amplifications` weighs the
    same trade; here the candidates are the divisors of the local steps (so every round
    holds whole cycles) and the calibration is the ledger's own.
    """
    steps = sum(n for _, n in planned)
    best: tuple[float, int, float, list[float]] | None = None
    for bands in (b for b in range(1, local_steps + 1) if local_steps % b == 0):
        if any(bands * rate > 1 for rate, _ in planned):
            break  # a class smaller than the batch: no amplification left to trade
        sigma = noise_for_schedule(
            target_epsilon, delta, accounted_schedule(planned, bands), accountant
        )
        coefficients = strategy(bands, steps)
        error = prefix_error(coefficients, steps) * sigma**2
        if best is None or error < best[0]:
            best = (error, bands, sigma, coefficients)
    assert best is not None  # bands = 1 always qualifies (rates are at most 1)
    return best[1], best[2], best[3]


def check_coefficients(coefficients: Sequence[float]) -> None:
    """The strategy's sensitivity is 1 only for non-negative, non-increasing coefficients
    of norm 1 (each record's columns then never overlap within a band)."""
    c = np.asarray(coefficients, dtype=np.float64)
    ok = len(c) >= 1 and c[0] > 0 and (c >= 0).all() and (np.diff(c) <= 1e-12).all()
    if not ok or not math.isclose(float(np.linalg.norm(c)), 1.0, rel_tol=1e-9):
        raise BandsError(f"banded noise coefficients {list(c)} are not a valid strategy")
