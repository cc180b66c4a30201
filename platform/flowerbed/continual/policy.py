"""Continual modes as small policies, chosen once by `continual_policy`.

A policy says what a round trains on (the pool, a pure function of the client's data
and buffer), how often a record can be drawn in a round of each experience (for the
privacy plan), and what the continual state gains when an experience arrives.

- `off`: every experience folder present, as one shard; no continual state.
- `naive`: the newest experience only (the forgetting baseline).
- `cumulative`: every experience that has arrived (the upper bound).
- `replay`: the newest experience plus a replay buffer of older records.
"""

from __future__ import annotations

import numpy as np

from flowerbed.config import ContinualConfig
from flowerbed.continual.pool import TokenRows, TrainingPool, mix_rates
from flowerbed.continual.replay import buffer_refs, storage_policy, update_buffer
from flowerbed.continual.state import ContinualState


class ContinualPolicy:
    """`naive`: train on the newest experience; remember arrivals, keep no buffer."""

    keeps_state = True
    """Whether the client records arrivals (and a buffer) in continual_state.json."""

    def __init__(self, cfg: ContinualConfig) -> None:
        self.cfg = cfg

    @property
    def rewarms(self) -> bool:
        """Whether the learning-rate schedule restarts at each new experience."""
        return self.cfg.rewarm

    def trained(self, latest: int) -> list[int]:
        """The experiences whose records are this round's new data (`latest`: the newest)."""
        return [latest]

    def sample_rate(self, sizes: list[int], e: int, batch_size: int) -> float:
        """The highest rate any record is drawn at, per step, in a round of experience e."""
        return min(1.0, batch_size / sizes[e])

    def advance(self, state: ContinualState, past_sizes: list[int], seed: list[int]) -> None:
        """What the state gains once the arrivals are noted (`past_sizes`: older experiences)."""

    def pool(self, arrays: list[np.ndarray], state: ContinualState | None) -> TrainingPool:
        """The round's training pool over the arrived experiences' token arrays."""
        return TrainingPool(TokenRows.whole(arrays, self.trained(len(arrays) - 1)))


class Cumulative(ContinualPolicy):
    """`cumulative`: train on every experience that has arrived."""

    def trained(self, latest: int) -> list[int]:
        return list(range(latest + 1))

    def sample_rate(self, sizes: list[int], e: int, batch_size: int) -> float:
        return min(1.0, batch_size / sum(sizes[: e + 1]))


class Off(Cumulative):
    """`off`: every folder present is one shard; no state, no re-warming."""

    keeps_state = False

    @property
    def rewarms(self) -> bool:
        return False


class Replay(ContinualPolicy):
    """`replay`: the newest experience, with `replay_fraction` of each batch from the buffer."""

    def sample_rate(self, sizes: list[int], e: int, batch_size: int) -> float:
        held = storage_policy(self.cfg.policy).fill(self.cfg.buffer_size, sizes[:e])
        return max(mix_rates(sizes[e], held, self.cfg.replay_fraction, batch_size))

    def advance(self, state: ContinualState, past_sizes: list[int], seed: list[int]) -> None:
        # The first experience has nothing to replay yet.
        state.buffer = (
            update_buffer(state.buffer, self.cfg, past_sizes, seed) if past_sizes else None
        )

    def pool(self, arrays: list[np.ndarray], state: ContinualState | None) -> TrainingPool:
        new = TokenRows.whole(arrays, self.trained(len(arrays) - 1))
        if state is None or state.buffer is None:
            return TrainingPool(new, None, self.cfg.replay_fraction)
        replay = TokenRows(arrays, buffer_refs(state.buffer))
        return TrainingPool(new, replay, self.cfg.replay_fraction)


POLICIES: dict[str, type[ContinualPolicy]] = {
    "off": Off,
    "naive": ContinualPolicy,
    "cumulative": Cumulative,
    "replay": Replay,
}


def continual_policy(cfg: ContinualConfig) -> ContinualPolicy:
    """The policy for `cfg.mode`: the one place a continual mode is looked up."""
    return POLICIES[cfg.mode](cfg)
