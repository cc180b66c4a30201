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
from flowerbed.continual.pool import TrainingPool, mix_rates
from flowerbed.continual.replay import (
    ReservoirDraws,
    buffer_refs,
    storage_policy,
    update_buffer,
)
from flowerbed.continual.rows import TokenRows
from flowerbed.continual.state import ContinualState

Units = tuple[list[np.ndarray], int] | None
"""Unit-level DP: each experience's rows' units, and the blocks a unit gives one step."""


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

    def sample_rate(
        self, sizes: list[int], e: int, batch_size: int, units: list[int] | None = None
    ) -> float:
        """The highest rate any record (or unit: `units` per experience) is drawn at, per
        step, in a round of experience e (`sizes`: records per experience)."""
        return min(1.0, batch_size / (units or sizes)[e])

    def advance(self, state: ContinualState, past_sizes: list[int], draws: ReservoirDraws) -> None:
        """What the state gains once the arrivals are noted (`past_sizes`: older experiences)."""

    def pool(
        self, arrays: list[np.ndarray], state: ContinualState | None, units: Units = None
    ) -> TrainingPool:
        """The round's training pool over the arrived experiences' token arrays (`units`:
        their rows' privacy units and the blocks a unit gives a step, under unit DP)."""
        unit_ids, cap = units or (None, 1)
        new = TokenRows.whole(arrays, self.trained(len(arrays) - 1), unit_ids)
        return TrainingPool(new, max_blocks_per_unit=cap)


class Cumulative(ContinualPolicy):
    """`cumulative`: train on every experience that has arrived."""

    def trained(self, latest: int) -> list[int]:
        return list(range(latest + 1))

    def sample_rate(
        self, sizes: list[int], e: int, batch_size: int, units: list[int] | None = None
    ) -> float:
        # A unit with blocks in two experiences counts twice here: the plan's rate is then
        # low, and the budget check stops the client before it overspends.
        return min(1.0, batch_size / sum((units or sizes)[: e + 1]))


class Off(Cumulative):
    """`off`: every folder present is one shard; no state, no re-warming."""

    keeps_state = False

    @property
    def rewarms(self) -> bool:
        return False


class Replay(ContinualPolicy):
    """`replay`: the newest experience, with `replay_fraction` of each batch from the buffer."""

    def sample_rate(
        self, sizes: list[int], e: int, batch_size: int, units: list[int] | None = None
    ) -> float:
        held = storage_policy(self.cfg.policy).fill(self.cfg.buffer_size, sizes[:e])
        if not units:
            return max(mix_rates(sizes[e], held, self.cfg.replay_fraction, batch_size))
        # A unit seen before may have new rows too, and is then drawn at the new data's full
        # rate: plan for the higher of that and the buffer's rate over at most `held` units.
        held = min(held, sum(units[:e]))
        replayed = self.cfg.replay_fraction * batch_size / held if held else 0.0
        return min(1.0, max(batch_size / units[e], replayed))

    def advance(self, state: ContinualState, past_sizes: list[int], draws: ReservoirDraws) -> None:
        # The first experience has nothing to replay yet.
        state.buffer = (
            update_buffer(state.buffer, self.cfg, past_sizes, draws) if past_sizes else None
        )

    def pool(
        self, arrays: list[np.ndarray], state: ContinualState | None, units: Units = None
    ) -> TrainingPool:
        unit_ids, cap = units or (None, 1)
        new = TokenRows.whole(arrays, self.trained(len(arrays) - 1), unit_ids)
        if state is None or state.buffer is None:
            return TrainingPool(new, None, self.cfg.replay_fraction, cap)
        replay = TokenRows(arrays, buffer_refs(state.buffer), unit_ids)
        return TrainingPool(new, replay, self.cfg.replay_fraction, cap)


POLICIES: dict[str, type[ContinualPolicy]] = {
    "off": Off,
    "naive": ContinualPolicy,
    "cumulative": Cumulative,
    "replay": Replay,
}


def continual_policy(cfg: ContinualConfig) -> ContinualPolicy:
    """The policy for `cfg.mode`: the one place a continual mode is looked up."""
    return POLICIES[cfg.mode](cfg)
