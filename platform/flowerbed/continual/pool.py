"""What one round trains on: the newest data and, with replay, records from the buffer.

Both parts are rows of the client's memory-mapped experience arrays, addressed by
(experience, row) references, so nothing is copied until a batch is gathered. Batches
are either fixed-size mixes (plain training) or Poisson draws at two rates (DP-SGD),
with the replayed share as configured either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class TokenRows:
    """Rows of several token arrays, addressed as one: `refs[i] = (array, row)`."""

    def __init__(self, arrays: list[np.ndarray], refs: np.ndarray) -> None:
        self.arrays = arrays
        self.refs = np.asarray(refs, dtype=np.int64).reshape(-1, 2)

    @classmethod
    def whole(cls, arrays: list[np.ndarray], which: list[int]) -> TokenRows:
        """Every row of the arrays numbered `which`."""
        refs = [np.stack([np.full(len(arrays[a]), a), np.arange(len(arrays[a]))], 1) for a in which]
        return cls(arrays, np.concatenate(refs) if refs else np.zeros((0, 2)))

    def __len__(self) -> int:
        return len(self.refs)

    @property
    def seq_len(self) -> int:
        return int(self.arrays[0].shape[1])

    def take(self, index: np.ndarray) -> np.ndarray:
        """The token rows at `index` (in order), as int64."""
        refs = self.refs[index]
        out = np.empty((len(refs), self.seq_len), dtype=np.int64)
        for a in np.unique(refs[:, 0]):
            mine = np.flatnonzero(refs[:, 0] == a)
            out[mine] = self.arrays[a][refs[mine, 1]]
        return out


def poisson_sample(num_records: int, sample_rate: float, rng: np.random.Generator) -> np.ndarray:
    """Each record joins the batch independently with probability `sample_rate`."""
    return np.flatnonzero(rng.random(num_records) < sample_rate)


@dataclass
class TrainingPool:
    """The newest data plus (optionally) a replay buffer, mixed at `replay_fraction`."""

    new: TokenRows
    replay: TokenRows | None = None
    replay_fraction: float = 0.0

    @classmethod
    def over(cls, tokens: np.ndarray) -> TrainingPool:
        """A pool of one token array and no replay (what a non-continual client trains on)."""
        return cls(TokenRows.whole([tokens], [0]))

    @property
    def replaying(self) -> bool:
        return self.replay is not None and len(self.replay) > 0 and self.replay_fraction > 0

    @property
    def num_records(self) -> int:
        return len(self.new) + (len(self.replay) if self.replaying else 0)

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
        """Per-record inclusion rates (new, replay) giving `batch_size` rows expected."""
        replayed = len(self.replay) if self.replaying else 0
        return mix_rates(len(self.new), replayed, self.replay_fraction, batch_size)

    def accounting_rate(self, batch_size: int) -> float:
        """The rate the privacy ledger records: the highest any record is drawn with.

        Every record sits in exactly one part, so no record is sampled more often than
        this; accounting at the maximum is an upper bound for every record.
        """
        return max(self.poisson_rates(batch_size))

    def expected_batch(self, batch_size: int) -> float:
        q_new, q_replay = self.poisson_rates(batch_size)
        return q_new * len(self.new) + (q_replay * len(self.replay) if self.replaying else 0.0)

    def poisson_batch(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """One Poisson draw over new data and buffer; may be empty: [n, seq_len] int64."""
        q_new, q_replay = self.poisson_rates(batch_size)
        rows = [self.new.take(poisson_sample(len(self.new), q_new, rng))]
        if self.replaying:
            rows.append(self.replay.take(poisson_sample(len(self.replay), q_replay, rng)))
        return np.concatenate(rows)


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
