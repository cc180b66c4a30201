"""The config sections that choose a mode: privacy and continual learning.

Each mode's settings are checked here; which code runs for a mode is chosen once, by the
factories `flowerbed.privacy.modes.privacy_mode` and `flowerbed.continual.policy.continual_policy`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from flowerbed.config.sections import require

PrivacyMode = Literal["off", "dp_sgd", "user_level"]
ContinualMode = Literal["off", "naive", "replay", "cumulative"]


@dataclass
class PrivacyConfig:
    """Differential privacy: `off`, sample-level DP-SGD in every client, or user-level DP."""

    mode: PrivacyMode
    max_grad_norm: float
    """dp_sgd: per-sequence clipping norm. user_level: clipping norm of each client's update."""
    delta: float
    noise_multiplier: float | None
    """Noise std / clipping norm. Give this or target_epsilon (dp_sgd), not both."""
    target_epsilon: float | None
    """dp_sgd: calibrate the noise so the client's whole planned life spends this epsilon."""
    max_epsilon: float | None
    """Budget cap when noise_multiplier is given (target_epsilon is its own cap)."""
    accountant: Literal["prv", "rdp"]
    grad_sample_mode: Literal["ghost", "hooks"]
    """ghost: fast (ghost) clipping, less memory; hooks: per-sample gradients, any layer."""
    max_physical_batch: int
    """Split each Poisson batch into chunks of at most this many sequences (0: no split)."""

    def __post_init__(self) -> None:
        if self.mode == "off":
            return
        require(self.max_grad_norm > 0, "privacy.max_grad_norm must be > 0")
        require(0 < self.delta < 1, f"privacy.delta must be in (0, 1), got {self.delta}")
        require(self.max_physical_batch >= 0, "privacy.max_physical_batch must be >= 0")
        given = [k for k in ("noise_multiplier", "target_epsilon") if getattr(self, k) is not None]
        if self.mode == "dp_sgd":
            require(
                len(given) == 1,
                "privacy: give privacy.target_epsilon or privacy.noise_multiplier, "
                + ("not both" if given else "one of them"),
            )
        else:
            require(
                self.noise_multiplier is not None and self.target_epsilon is None,
                "privacy=user_level needs privacy.noise_multiplier (and no target_epsilon; "
                "use privacy.max_epsilon to cap the budget)",
            )
        require(
            self.target_epsilon is None or self.max_epsilon is None,
            "privacy: target_epsilon is the budget already; do not also give max_epsilon",
        )
        for key in ("noise_multiplier", "target_epsilon", "max_epsilon"):
            value = getattr(self, key)
            require(value is None or value > 0, f"privacy.{key} must be > 0, got {value}")

    @property
    def budget(self) -> float | None:
        """The epsilon a client may spend in its life (None: no cap)."""
        return self.target_epsilon if self.target_epsilon is not None else self.max_epsilon


@dataclass
class ContinualConfig:
    """Continual learning: each client's data arrives as a sequence of experiences.

    `naive` trains on the newest experience only, `replay` mixes in records kept in a
    replay buffer (an Avalanche storage policy) and `cumulative` trains on everything
    seen so far (the upper-bound baseline).
    """

    mode: ContinualMode
    experiences: int
    """Simulation: how many experiences each client's share of the corpus is cut into."""
    split: Literal["domain", "slice"]
    """Simulation: experiences by groups of domains, or by consecutive slices of the text."""
    arrival_every: int | None
    """Rounds between arrivals in simulation (None: spread evenly over the rounds);
    0: use every experience folder present in the client's data directory (deployment)."""
    policy: Literal["reservoir", "experience_balanced"]
    """replay: Avalanche's ReservoirSamplingBuffer or ExperienceBalancedBuffer."""
    buffer_size: int
    """replay: records (blocks) the buffer keeps, as references into the client's data."""
    replay_fraction: float
    """replay: the share of each batch drawn from the buffer (expected share under DP)."""
    rewarm: bool
    """Re-warm and re-decay the learning rate at each new experience (Ibrahim et al. 2024)."""

    def __post_init__(self) -> None:
        if self.mode == "off":
            return
        require(
            self.experiences >= 1, f"continual.experiences must be >= 1, got {self.experiences}"
        )
        require(
            self.arrival_every is None or self.arrival_every >= 0,
            f"continual.arrival_every must be >= 0 (or null), got {self.arrival_every}",
        )
        if self.mode == "replay":
            require(
                self.buffer_size >= 1,
                f"continual.buffer_size must be >= 1, got {self.buffer_size}",
            )
            require(
                0.0 < self.replay_fraction < 1.0,
                f"continual.replay_fraction must be in (0, 1), got {self.replay_fraction}",
            )

    @property
    def enabled(self) -> bool:
        """Whether data arrives as experiences (any mode but `off`)."""
        return self.mode != "off"

    def arrival_interval(self, rounds: int) -> int:
        """Rounds between arrivals: as given, the rounds spread evenly, or 0 (every folder
        present) when continual learning is off."""
        if not self.enabled:
            return 0
        if self.arrival_every is not None:
            return self.arrival_every
        return max(rounds // self.experiences, 1)
