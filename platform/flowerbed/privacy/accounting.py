"""Epsilon from a DP-SGD history, and the noise that reaches a target, via Opacus's accountants.

A history is a list of (noise_multiplier, sample_rate, steps): every step in which any
record could have been sampled, over the client's whole life. Opacus is imported lazily
(about 12 s here), only where accounting is needed.
"""

from __future__ import annotations

from collections.abc import Sequence

History = Sequence[tuple[float, float, int]]


def _accountant(name: str, history: History):
    from opacus.accountants import PRVAccountant, RDPAccountant

    accountant = {"prv": PRVAccountant, "rdp": RDPAccountant}[name]()
    accountant.history = [(float(s), float(q), int(n)) for s, q, n in history if n > 0]
    return accountant


def epsilon(history: History, delta: float, accountant: str = "prv") -> float:
    """The epsilon spent by `history` at `delta` (0 when nothing was spent)."""
    if not any(n > 0 for _, _, n in history):
        return 0.0
    return float(_accountant(accountant, history).get_epsilon(delta=delta))


def noise_for_epsilon(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "prv"
) -> float:
    """The smallest noise multiplier (to Opacus's tolerance) keeping `steps` within the target."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
        )
    )
