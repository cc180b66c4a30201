"""Epsilon from a DP-SGD history, and the noise that reaches a target, via Opacus's accountants.

A history is a list of (noise_multiplier, sample_rate, steps): every step in which any
record could have been sampled, over the client's whole life. Opacus is imported lazily,
only where accounting is needed (its accountants: about 0.4 s once torch is loaded).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

History = Sequence[tuple[float, float, int]]


def merged(history: History) -> list[tuple[float, float, int]]:
    """Consecutive entries with the same noise and rate as one (the same composition).

    A ledger gets an entry per round, but the rate changes only with new experiences:
    merging keeps the accountant's cost (about 0.25 s per PRV entry) from growing with
    the client's life.
    """
    out: list[tuple[float, float, int]] = []
    for sigma, q, n in history:
        if n <= 0:
            continue
        if out and out[-1][:2] == (float(sigma), float(q)):
            out[-1] = (out[-1][0], out[-1][1], out[-1][2] + int(n))
        else:
            out.append((float(sigma), float(q), int(n)))
    return out


def _accountant(name: str, history: History):
    from opacus.accountants import PRVAccountant, RDPAccountant

    accountant = {"prv": PRVAccountant, "rdp": RDPAccountant}[name]()
    accountant.history = merged(history)
    return accountant


@contextmanager
def one_rdp_curve_per_mechanism() -> Iterator[None]:
    """Within the block, Opacus computes each (noise, rate) pair's RDP curve once.

    Every PRV evaluation bounds its discretisation domain with RDP, once for the whole
    history and once per entry, so each curve was computed twice: 86% of an evaluation's
    time, and a calibration makes 15-20 evaluations. `compute_rdp` is the curve times the
    steps, so the cached curve times the steps is the same number to the bit (a test
    checks it against Opacus's own).
    """
    from opacus.accountants.analysis import rdp

    original = rdp.compute_rdp
    curves = {}

    def compute_rdp(*, q, noise_multiplier, steps, orders):
        key = (q, noise_multiplier, orders if isinstance(orders, float) else tuple(orders))
        if key not in curves:
            curves[key] = original(q=q, noise_multiplier=noise_multiplier, steps=1, orders=orders)
        return curves[key] * steps

    rdp.compute_rdp = compute_rdp
    try:
        yield
    finally:
        rdp.compute_rdp = original


def epsilon(history: History, delta: float, accountant: str = "prv") -> float:
    """The epsilon spent by `history` at `delta` (0 when nothing was spent)."""
    if not any(n > 0 for _, _, n in history):
        return 0.0
    with one_rdp_curve_per_mechanism():
        return float(_accountant(accountant, history).get_epsilon(delta=delta))


def noise_for_epsilon(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "prv"
) -> float:
    """The smallest noise multiplier (to Opacus's tolerance) keeping `steps` within the target."""
    from opacus.accountants.utils import get_noise_multiplier

    with one_rdp_curve_per_mechanism():
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
            )
        )


class CalibrationError(ValueError):
    """No noise multiplier reaches the target; the message says which settings to change."""


def noise_for_schedule(
    target_epsilon: float,
    delta: float,
    schedule: Sequence[tuple[float, int]],
    accountant: str = "prv",
    tolerance: float = 0.01,
    max_iterations: int = 100,
) -> float:
    """The noise multiplier keeping a whole schedule of (sample_rate, steps) within the target.

    One rate is Opacus's own calibration; several (a client whose rate changes as new
    experiences arrive) are bisected the same way, to within `tolerance` below the target.

    Raises:
        CalibrationError: no noise below 2**20 reaches the target, or the bisection did
            not settle within `max_iterations` halvings.
    """
    rates = {q for q, n in schedule if n > 0}
    if len(rates) == 1:
        return noise_for_epsilon(
            target_epsilon, delta, rates.pop(), sum(n for _, n in schedule), accountant
        )

    def spent(sigma: float) -> float:
        return epsilon([(sigma, q, n) for q, n in schedule], delta, accountant)

    low, high = 0.0, 10.0
    while spent(high) > target_epsilon:
        if high > 2**20:
            raise CalibrationError(
                f"no noise multiplier keeps {sum(n for _, n in schedule)} steps within "
                f"epsilon {target_epsilon}: raise privacy.target_epsilon, or lower the "
                "rounds, local steps or batch size"
            )
        low, high = high, 2 * high
    for _ in range(max_iterations):
        sigma = (low + high) / 2
        eps = spent(sigma)
        if eps > target_epsilon:
            low = sigma
        elif eps < target_epsilon - tolerance:
            high = sigma
        else:
            return sigma
    raise CalibrationError(
        f"the noise for epsilon {target_epsilon} did not settle within {tolerance} after "
        f"{max_iterations} halvings (last: {low:.6g}..{high:.6g}); widen the tolerance"
    )
