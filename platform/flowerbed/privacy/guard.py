"""The client's privacy guard around a round: noise for life, the budget check, the ledger.

Under DP-SGD the guard opens the client's lifetime ledger from its state directory,
fixes the noise multiplier once for the client's whole planned life, refuses a round
that would pass the budget, and writes the round (atomically, durably) before the
update leaves the client. Without DP-SGD a `NoGuard` allows every round and records
nothing, so the ClientApp runs the same steps in every mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flowerbed.config import PrivacyConfig
from flowerbed.privacy.ledger import FILENAME, PrivacyLedger
from flowerbed.privacy.planning import life_noise_multiplier


@dataclass(frozen=True)
class RoundPermit:
    """What the guard allows this round."""

    allowed: bool
    """False: the round would pass the client's budget, so it must not train."""
    noise_multiplier: float | None
    """DP-SGD's noise for the round (None: train without DP-SGD)."""
    sample_rate: float
    """The highest rate any record is drawn at: what the ledger records."""
    epsilon_after: float | None = None
    """The lifetime epsilon once this round is recorded, when the budget check computed it
    (the ledger records it instead of computing it again: a PRV evaluation, 0.4-1 s)."""


class PrivacyGuard:
    """DP-SGD's guard: the lifetime ledger in `state_dir`, read and written every round."""

    def __init__(self, cfg: PrivacyConfig, state_dir: Path, budget: float | None) -> None:
        self.cfg, self.path, self.budget = cfg, state_dir / FILENAME, budget
        """`budget`: the lifetime ε the client may spend (the node's cap or the server's)."""
        self.ledger = PrivacyLedger.open(self.path, cfg.delta, cfg.accountant, cfg.unit)

    def permit(
        self, sample_rate: float, steps: int, planned: list[tuple[float, int]]
    ) -> RoundPermit:
        """Noise calibrated once for the planned life (`planned`: (rate, steps) per round),
        or a refusal when `steps` more at `sample_rate` would pass the budget."""
        sigma = life_noise_multiplier(self.ledger, self.cfg, planned)
        budget = self.budget
        if budget is None:
            return RoundPermit(True, sigma, sample_rate)
        after = self.ledger.epsilon_after(sigma, sample_rate, steps)
        if after > budget:
            self.ledger.save(self.path)  # keeps the noise fixed for life
            return RoundPermit(False, sigma, sample_rate)
        return RoundPermit(True, sigma, sample_rate, after)

    def record(self, round_: int, permit: RoundPermit, steps: int) -> float:
        """Append the round to the ledger on disk; return the lifetime epsilon."""
        return self.ledger.record(
            self.path,
            round_,
            permit.noise_multiplier,
            permit.sample_rate,
            steps,
            self.cfg.noise_seed,
            permit.epsilon_after,
        )

    @property
    def epsilon(self) -> float:
        return self.ledger.epsilon

    @property
    def releases(self) -> int:
        """Rounds the ledger holds: this round's place in the client's life."""
        return len(self.ledger.entries)


class NoGuard:
    """No DP-SGD at the client (privacy off, or user-level DP at the server)."""

    def permit(
        self, sample_rate: float, steps: int, planned: list[tuple[float, int]]
    ) -> RoundPermit:
        return RoundPermit(True, None, sample_rate)

    def record(self, round_: int, permit: RoundPermit, steps: int) -> None:
        return None

    @property
    def epsilon(self) -> None:
        return None

    @property
    def releases(self) -> int:
        return 0
