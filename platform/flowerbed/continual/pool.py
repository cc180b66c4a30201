"""What one round trains on: the newest data and, with replay, records from the buffer.

Both parts are rows of the client's memory-mapped experience arrays, addressed by
(experience, row) references, so nothing is copied until a batch is gathered. Batches
are either fixed-size mixes (plain training) or Poisson draws at two rates (DP-SGD),
with the replayed share as configured either way.

Under unit-level DP the Poisson draw is over units (documents, users), not rows: a unit
with any row in the new data is drawn at the new data's rate (with all its rows, its
buffered ones too), a unit found only in the buffer at the replay rate, so each unit is
drawn at most once a step, at the higher of the two rates at most. A drawn unit gives up
to `max_blocks_per_unit` of its rows, picked at random.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from flowerbed.continual.rows import TokenRows
from flowerbed.privacy.cyclic import Cycle


def poisson_sample(num_records: int, sample_rate: float, rng: np.random.Generator) -> np.ndarray:
    """Each record joins the batch independently with probability `sample_rate`."""
    return np.flatnonzero(rng.random(num_records) < sample_rate)


@dataclass
class TrainingPool:
    """The newest data plus (optionally) a replay buffer, mixed at `replay_fraction`."""

    new: TokenRows
    replay: TokenRows | None = None
    replay_fraction: float = 0.0
    max_blocks_per_unit: int = 1
    """Unit-level DP (rows with `units`): rows a drawn unit gives one step, at most."""
    padded: bool = False
    """Rows packed by document end in padding (`PAD_ID`), neither input nor target."""
    cycle: Cycle | None = None
    """`privacy.mechanism=banded`: each Poisson draw is over one class of records, in turn
    (`privacy/cyclic.py`), at `bands` times the rate."""
    _classes: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def over(cls, tokens: np.ndarray) -> TrainingPool:
        """A pool of one token array and no replay (what a non-continual client trains on)."""
        return cls(TokenRows.whole([tokens], [0]))

    @property
    def seq_len(self) -> int:
        return self.new.seq_len

    @property
    def replaying(self) -> bool:
        return self.replay is not None and len(self.replay) > 0 and self.replay_fraction > 0

    @property
    def by_unit(self) -> bool:
        """Whether DP-SGD draws units (documents, users) rather than rows."""
        return self.new.units is not None

    @cached_property
    def _units(self) -> UnitTable:
        return UnitTable.of(self.new, self.replay if self.replaying else None)

    def _counts(self) -> tuple[int, int]:
        """What a Poisson draw is over, (new, replay-only): rows, or units."""
        if self.by_unit:
            return self._units.new_units, self._units.count - self._units.new_units
        return len(self.new), len(self.replay) if self.replaying else 0

    @property
    def num_records(self) -> int:
        """Rows, or units under unit-level DP."""
        return sum(self._counts())

    def fixed_batches(self, steps: int, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """`steps` batches of `batch_size` rows: [steps, batch, seq_len] int64.

        Exactly round(fraction * steps * batch) slots of the round are replayed, spread at
        random over the steps, so small fractions still replay (5% of 8 rows is 0.4).
        """
        slots = steps * batch_size
        n_replay = round(self.replay_fraction * slots) if self.replaying else 0
        is_replay = np.zeros(slots, dtype=bool)
        is_replay[rng.permutation(slots)[:n_replay]] = True
        per_step = is_replay.reshape(steps, batch_size).sum(1)
        batches = []
        for k in range(steps):
            n_new = batch_size - int(per_step[k])
            rows = [self.new.take(_distinct(len(self.new), n_new, rng))]
            if per_step[k]:
                rows.append(self.replay.take(_distinct(len(self.replay), int(per_step[k]), rng)))
            batches.append(np.concatenate(rows))
        return np.stack(batches)

    def poisson_rates(self, batch_size: int) -> tuple[float, float]:
        """Per-record (per-unit) inclusion rates (new, replay) giving `batch_size` expected."""
        return mix_rates(*self._counts(), self.replay_fraction, batch_size)

    def accounting_rate(self, batch_size: int) -> float:
        """The rate the privacy ledger records: the highest any record is drawn with.

        Every record sits in exactly one part, so no record is sampled more often than
        this; accounting at the maximum is an upper bound for every record.
        """
        return max(self.poisson_rates(batch_size))

    def expected_batch(self, batch_size: int) -> float:
        """Rows (units, under unit-level DP) a Poisson draw holds on average."""
        (q_new, q_replay), (n_new, n_replay) = self.poisson_rates(batch_size), self._counts()
        return q_new * n_new + q_replay * n_replay

    def poisson_batch(
        self, batch_size: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One Poisson draw over new data and buffer; may be empty: [n, seq_len] int64, and
        under unit-level DP the drawn unit of each row (0, 1, ..., rows of a unit adjacent)."""
        q_new, q_replay = self.poisson_rates(batch_size)
        if self.cycle is None or self.cycle.bands == 1:
            turn = None
        else:
            turn, bands = self.cycle.turn(), self.cycle.bands
            q_new, q_replay = min(1.0, bands * q_new), min(1.0, bands * q_replay)
        if self.by_unit:
            eligible = None if turn is None else self._class_of("units") == turn
            return self._units.draw(self, q_new, q_replay, rng, eligible)
        new = poisson_sample(len(self.new), q_new, rng)
        rows = [self.new.take(self._in_turn(new, "new", turn))]
        if self.replaying:
            replayed = poisson_sample(len(self.replay), q_replay, rng)
            rows.append(self.replay.take(self._in_turn(replayed, "replay", turn)))
        return np.concatenate(rows), None

    def _in_turn(self, sampled: np.ndarray, part: str, turn: int | None) -> np.ndarray:
        """The sampled rows of `part` whose class is this step's (all without a cycle)."""
        return sampled if turn is None else sampled[self._class_of(part)[sampled] == turn]

    def _class_of(self, part: str) -> np.ndarray:
        """Every record's class in the cycle, per part (`new`, `replay`) or `units`."""
        if part not in self._classes:
            assert self.cycle is not None
            if part == "units":
                self._classes[part] = self.cycle.classes(self._units.unit_ids)
            else:  # a piece at a time: the whole pool as int64 could be gigabytes
                rows = self.new if part == "new" else self.replay
                assert rows is not None
                pieces = np.array_split(np.arange(len(rows)), max(1, len(rows) // 65536))
                classes = [self.cycle.classes(rows.take(piece)) for piece in pieces]
                self._classes[part] = np.concatenate(classes)
        return self._classes[part]

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows numbered over the new data, then the buffer."""
        first = rows < len(self.new)
        out = np.empty((len(rows), self.new.seq_len), dtype=np.int64)
        out[first] = self.new.take(rows[first])
        if not first.all():
            out[~first] = self.replay.take(rows[~first] - len(self.new))
        return out


@dataclass(frozen=True)
class UnitTable:
    """The pool's units and their rows (numbered over the new data, then the buffer):
    units with a new row first, then units found only in the buffer."""

    rows: np.ndarray
    """Row numbers, grouped by unit."""
    starts: np.ndarray
    """Unit u's rows are rows[starts[u]:starts[u + 1]]."""
    new_units: int
    unit_ids: np.ndarray
    """Unit u's document or user id."""

    @classmethod
    def of(cls, new: TokenRows, replay: TokenRows | None) -> UnitTable:
        fresh = new.unit_ids()
        ids = np.concatenate([fresh, replay.unit_ids()]) if replay is not None else fresh
        only_buffered = ~np.isin(ids, fresh)
        rows = np.lexsort((ids, only_buffered))  # new units first, each unit's rows together
        ordered = ids[rows]
        starts = np.flatnonzero(np.diff(ordered, prepend=ordered[:1] - 1) != 0)
        new_units = int(np.count_nonzero(~only_buffered[rows[starts]]))
        return cls(rows, np.append(starts, len(rows)), new_units, ordered[starts])

    @property
    def count(self) -> int:
        return len(self.starts) - 1

    def draw(
        self,
        pool: TrainingPool,
        q_new: float,
        q_replay: float,
        rng: np.random.Generator,
        eligible: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each unit at its part's rate; each drawn unit's rows, at most `max_blocks_per_unit`
        (`eligible`: the units this step may draw, by the cycle; None: all)."""
        picked = np.concatenate(
            [
                poisson_sample(self.new_units, q_new, rng),
                self.new_units + poisson_sample(self.count - self.new_units, q_replay, rng),
            ]
        )
        if eligible is not None:
            picked = picked[eligible[picked]]
        parts, groups, cap = [], [], pool.max_blocks_per_unit
        for g, unit in enumerate(picked):
            rows = self.rows[self.starts[unit] : self.starts[unit + 1]]
            if len(rows) > cap:
                rows = np.sort(rng.choice(rows, cap, replace=False))
            parts.append(rows)
            groups.append(np.full(len(rows), g))
        if not parts:
            return np.zeros((0, pool.new.seq_len), dtype=np.int64), np.zeros(0, dtype=np.int64)
        return pool.take(np.concatenate(parts)), np.concatenate(groups)


def mix_rates(
    num_new: int, num_replay: int, replay_fraction: float, batch_size: int
) -> tuple[float, float]:
    """Poisson rates (new, replay) for `batch_size` expected rows, `replay_fraction` replayed."""
    if num_replay == 0 or replay_fraction == 0:
        return min(1.0, batch_size / num_new), 0.0
    share = replay_fraction * batch_size
    return min(1.0, (batch_size - share) / num_new), min(1.0, share / num_replay)


def _distinct(population: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` indices, distinct unless the population is smaller, in ascending order."""
    return np.sort(rng.choice(population, count, replace=population < count))
