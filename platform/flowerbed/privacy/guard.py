"""The client's privacy guard around a round: noise for life, the budget check, the ledger.

Under DP-SGD the guard opens the client's lifetime ledger from its state directory,
fixes the noise multiplier once for the client's whole planned life, refuses a round
that would pass the budget, and writes the round ahead in the ledger (atomically,
durably, counted in ε) with the nonce that keys its noise and sample, before anything
is drawn. Without DP-SGD a `NoGuard` allows every round and records nothing, so the
ClientApp runs the same steps in every mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from flowerbed.config import PrivacyConfig
from flowerbed.privacy.banded import accounted
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
    """The lifetime epsilon with this round counted (DP-SGD, once allowed)."""
    nonce: str | None = None
    """The release's nonce in the ledger: its noise and sample are keyed by it."""
    coefficients: tuple[float, ...] | None = None
    """`privacy.mechanism=banded`: the strategy whose correlated noise the round adds."""
    previous_nonce: str = ""
    """The ledger's release before this one: the kept correlated noise must end there."""

    @property
    def bands(self) -> int:
        """Steps in a sampling cycle: a record is eligible once in every `bands` (1: DP-SGD)."""
        return len(self.coefficients) if self.coefficients else 1


class PrivacyGuard:
    """DP-SGD's guard: the lifetime ledger in `state_dir` (and its `mirror`)."""

    def __init__(
        self, cfg: PrivacyConfig, state_dir: Path, budget: float | None, mirror: Path | None
    ) -> None:
        self.cfg, self.path, self.budget, self.mirror = cfg, state_dir / FILENAME, budget, mirror
        """`budget`: the lifetime ε the client may spend (the node's cap or the server's)."""
        self.ledger = PrivacyLedger.open(self.path, cfg.delta, cfg.accountant, cfg.unit, mirror)

    def permit(
        self,
        round_: int,
        request: str,
        sample_rate: float,
        steps: int,
        planned: list[tuple[float, int]],
    ) -> RoundPermit:
        """The round written ahead in the ledger, its noise calibrated once for the planned
        life (`planned`: (rate, steps) per round); or a refusal when `steps` more at
        `sample_rate` would pass the budget. The same `request` re-run after a crash
        finds its pending entry: the same nonce, counted once. Under the banded
        mechanism the ledger holds what the steps cost as DP-SGD (`banded.accounted`)."""
        rerun = self.ledger.pending_for(request)
        if rerun is not None:
            return RoundPermit(
                True, rerun.noise_multiplier, rerun.sample_rate, rerun.epsilon, rerun.nonce,
                self._strategy(), self._previous_nonce(),
            )  # fmt: skip
        sigma = life_noise_multiplier(self.ledger, self.cfg, planned, steps)
        rate, participations = accounted(sample_rate, steps, len(self.ledger.coefficients))
        after = self.ledger.epsilon_after(sigma, rate, participations)
        if not math.isfinite(after) or (self.budget is not None and after > self.budget):
            return RoundPermit(False, sigma, rate)  # nothing saved: σ is fixed by a release
        draw = (sigma, rate, participations)
        entry = self.ledger.write_ahead(
            self.path, round_, request, draw, self.cfg.noise_seed, after, self.mirror
        )
        previous = self._previous_nonce()
        return RoundPermit(True, sigma, rate, after, entry.nonce, self._strategy(), previous)

    def _previous_nonce(self) -> str:
        """The nonce of the entry before the newest (this release's, written ahead)."""
        entries = self.ledger.entries
        return entries[-2].nonce if len(entries) > 1 else ""

    def _strategy(self) -> tuple[float, ...] | None:
        if self.ledger.mechanism != "banded":
            return None
        return tuple(self.ledger.coefficients)

    def record(self, permit: RoundPermit) -> float | None:
        """The round's release is done (it was counted when written ahead); the lifetime ε."""
        assert permit.nonce is not None
        self.ledger.finish(self.path, permit.nonce, self.mirror)
        return permit.epsilon_after

    @property
    def epsilon(self) -> float:
        return self.ledger.epsilon


class NoGuard:
    """No DP-SGD at the client (privacy off, or user-level DP at the server)."""

    def permit(
        self,
        round_: int,
        request: str,
        sample_rate: float,
        steps: int,
        planned: list[tuple[float, int]],
    ) -> RoundPermit:
        return RoundPermit(True, None, sample_rate)

    def record(self, permit: RoundPermit) -> None:
        return None

    @property
    def epsilon(self) -> None:
        return None
