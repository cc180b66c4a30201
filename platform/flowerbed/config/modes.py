"""The config sections that choose a mode: privacy and continual learning.

Each mode's settings are checked here; which code runs for a mode is chosen once, by the
factories `flowerbed.privacy.modes.privacy_mode` and `flowerbed.continual.policy.continual_policy`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from flowerbed.config.rules import Section, at_least, between, positive, require

PrivacyMode = Literal["off", "dp_sgd", "user_level"]
Auto = Literal["auto"]
ContinualMode = Literal["off", "naive", "replay", "cumulative"]


@dataclass
class PrivacyConfig(Section):
    """Differential privacy: `off`, sample-level DP-SGD in every client, or user-level DP."""

    key = "privacy"
    mode: PrivacyMode
    max_grad_norm: Annotated[float, positive()]
    """dp_sgd: per-sequence clipping norm. user_level: clipping norm of each client's update."""
    delta: Annotated[float, between(0, 1, open_=True)]
    noise_multiplier: Annotated[float | None, positive()]
    """Noise std / clipping norm. Give this or target_epsilon (dp_sgd), not both."""
    target_epsilon: Annotated[float | None, positive()]
    """dp_sgd: calibrate the noise so the client's whole planned life spends this epsilon."""
    max_epsilon: Annotated[float | None, positive()]
    """Budget cap when noise_multiplier is given (target_epsilon is its own cap)."""
    accountant: Literal["prv", "rdp"]
    grad_sample_mode: Literal["ghost", "bookkeeping", "hooks"]
    """ghost: fast (ghost) clipping, two backward passes; bookkeeping: one backward pass
    (Linear, Embedding, RMSNorm layers); hooks: per-sample gradients, any layer Opacus knows."""
    max_physical_batch: Annotated[int, at_least(0)]
    """Split each Poisson batch into chunks of at most this many sequences (0: no split)."""
    unit: Literal["auto", "sequence", "document", "user"]
    """What ε protects: one block of `data.seq_len` tokens, one document (a file, or a
    record of a .jsonl/.parquet file), or one user (`data.user_field`, or a folder).
    `auto`: document for the user's own files, sequence for the built-in corpora."""
    max_blocks_per_unit: Annotated[int, at_least(1)]
    """Unit-level DP: blocks a sampled document or user contributes to one step, at most
    (drawn at random from its blocks); the unit's summed gradient is clipped as one."""
    noise_seed: Literal["secret", "run"]
    """dp_sgd: `secret` draws the noise and the Poisson sample from each node's own secret;
    `run` from the run's seed, for bit-identical tests and studies only: it is not private
    against anyone who knows the run's seed, and a deployed SuperNode refuses it."""
    mechanism: Literal["dp_sgd", "banded"]
    """dp_sgd: independent noise every step. banded: noise correlated over the last
    `bands` steps (a banded matrix mechanism), which cancels much of it in the model,
    with each record eligible once every `bands` steps (`privacy/banded.py`)."""
    bands: Annotated[int | Auto, at_least(1)]
    """banded: steps whose noise is correlated, a divisor of train.local_steps (1 is
    DP-SGD); `auto`: the divisor whose noise in the model is least at target_epsilon."""

    def check(self) -> None:
        if self.mode == "off":
            return
        require(
            self.mechanism == "dp_sgd" or self.mode == "dp_sgd",
            "privacy.mechanism=banded correlates each client's own noise: use it with "
            "privacy=dp_sgd",
        )
        require(
            self.mechanism == "dp_sgd" or self.bands != "auto" or self.target_epsilon is not None,
            "privacy.bands=auto chooses the bands for privacy.target_epsilon: give one, or "
            "give privacy.bands as a number",
        )
        require(
            self.mechanism == "dp_sgd"
            or self.noise_seed == "secret"
            or self.grad_sample_mode == "bookkeeping",
            "privacy.mechanism=banded with privacy.noise_seed=run needs "
            "privacy.grad_sample_mode=bookkeeping",
        )
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

    @property
    def budget(self) -> float | None:
        """The epsilon a client may spend in its life (None: no cap)."""
        return self.target_epsilon if self.target_epsilon is not None else self.max_epsilon


@dataclass
class ContinualConfig(Section):
    """Continual learning: each client's data arrives as a sequence of experiences.

    `naive` trains on the newest experience only, `replay` mixes in records kept in a
    replay buffer (an Avalanche storage policy) and `cumulative` trains on everything
    seen so far (the upper-bound baseline).
    """

    key = "continual"
    mode: ContinualMode
    experiences: Annotated[int, at_least(1)]
    """Simulation: how many experiences each client's share of the corpus is cut into."""
    split: Literal["domain", "slice"]
    """Simulation: experiences by groups of domains, or by consecutive slices of the text."""
    arrival_every: Annotated[int | None, at_least(0)]
    """Rounds between arrivals in simulation (None: spread evenly over the rounds);
    0: use every experience folder present in the client's data directory (deployment)."""
    policy: Literal["reservoir", "experience_balanced"]
    """replay: Avalanche's ReservoirSamplingBuffer or ExperienceBalancedBuffer."""
    buffer_size: Annotated[int, at_least(1)]
    """replay: records (blocks) the buffer keeps, as references into the client's data."""
    replay_fraction: Annotated[float, between(0, 1)]
    """replay: the share of each batch drawn from the buffer (expected share under DP); 0
    keeps the buffer and replays nothing, the no-replay point of a replay sweep."""
    rewarm: bool
    """Re-warm and re-decay the learning rate at each new experience (Ibrahim et al. 2024)."""

    def check(self) -> None:
        require(
            self.mode != "replay" or self.replay_fraction < 1.0,
            "continual=replay needs continual.replay_fraction below 1 (0 keeps the buffer "
            f"and replays nothing), got {self.replay_fraction}",
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
