"""Privacy modes as small policies, chosen once by `privacy_mode`.

- `off`: no differential privacy.
- `dp_sgd`: sample-level DP-SGD in every client, with its lifetime ledger (the guard).
- `user_level`: the server clips each client's update and noises their average
  (Flower's fixed-clipping wrapper and its accountant); clients train plainly and reply
  with equal weights, as that accountant requires.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flowerbed.config import PrivacyConfig
from flowerbed.privacy.guard import NoGuard, PrivacyGuard


@dataclass(frozen=True)
class PrivacyMode:
    clients_private: bool
    """Each client runs DP-SGD and keeps a ledger."""
    server_private: bool
    """The server clips and noises the clients' updates (user-level DP)."""

    @property
    def protects(self) -> bool:
        """Whether the run gives any DP guarantee (and so has a delta)."""
        return self.clients_private or self.server_private

    @property
    def uniform_weights(self) -> bool:
        """Every client's update weighs the same (Flower's user-level accountant needs it)."""
        return self.server_private

    def guard(
        self, cfg: PrivacyConfig, state_dir: Path, budget: float | None, mirror: Path | None
    ) -> PrivacyGuard | NoGuard:
        """The client's guard for a round: the ledger under DP-SGD (spending at most
        `budget`; `mirror`: where its copy outside the state directory lives), else one
        that allows all."""
        if not self.clients_private:
            return NoGuard()
        return PrivacyGuard(cfg, state_dir, budget, mirror)


MODES = {
    "off": PrivacyMode(clients_private=False, server_private=False),
    "dp_sgd": PrivacyMode(clients_private=True, server_private=False),
    "user_level": PrivacyMode(clients_private=False, server_private=True),
}


def privacy_mode(cfg: PrivacyConfig) -> PrivacyMode:
    """The mode `privacy.mode` names: the one place it is looked up."""
    return MODES[cfg.mode]


def guarantee(cfg: PrivacyConfig) -> str:
    """What the run promises, in one line: the start line and summary.json say it."""
    if cfg.mode == "off":
        return "no differential privacy"
    if cfg.mode == "user_level":
        return (
            f"user-level DP at the server: noise {cfg.noise_multiplier} on the clipped mean "
            f"of the clients' updates (δ {cfg.delta:g})"
        )
    budget = f"ε {cfg.budget:g} per {cfg.unit}" if cfg.budget is not None else "ε uncapped"
    line = f"DP-SGD at each client, {budget} over its life (δ {cfg.delta:g})"
    if cfg.noise_seed == "run":
        return (
            f"{line}; noise and sampling from the run's seed (privacy.noise_seed=run): NOT "
            "private against anyone who knows the run's seed, for tests and studies only"
        )
    return f"{line}; noise and sampling secret to each node"
