"""Cyclic Poisson sampling: each record in one of `bands` classes for life, one class a step.

The banded mechanism (`banded.py`) is private only if a record can take part at most once
in any `bands` consecutive steps. A record's class is a keyed hash of what it is (a
block's tokens, or a document's or user's id), so it stays the same in every round,
whichever experience or replay buffer holds it, and no other record moves it; step t of
a round (whose steps are whole cycles) samples only class t mod `bands`, at `bands`
times the rate. The key comes from the node's secret (or, with `noise_seed=run`, the
run's seed), although the guarantee does not need the classes to be secret.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from flowerbed.privacy.secret import keyed_generator


@dataclass
class Cycle:
    """Which class a round's next step samples; the pool calls `turn` once a step."""

    bands: int
    key: bytes = field(repr=False)
    step: int = 0

    def turn(self) -> int:
        """The class the next step samples (the round starts a new cycle)."""
        turn, self.step = self.step % self.bands, self.step + 1
        return turn

    @property
    def fingerprint(self) -> str:
        """Names the classes without revealing the key: kept with the correlated noise."""
        return hashlib.sha256(b"cycle-classes/" + self.key).hexdigest()[:32]

    def classes(self, records: np.ndarray) -> np.ndarray:
        """The class of each record: `records` is [n, seq_len] tokens or [n] unit ids."""
        return record_classes(records, self.key, self.bands)


def record_classes(records: np.ndarray, key: bytes, bands: int) -> np.ndarray:
    """A keyed hash of each row of `records` (or each id), reduced to [0, bands)."""
    rows = np.asarray(records).reshape(len(records), -1).astype(np.uint64)
    weights = keyed_generator(key).integers(1, 2**63, size=rows.shape[1], dtype=np.uint64)
    with np.errstate(over="ignore"):  # arithmetic modulo 2^64 is the point
        mixed = (rows * (weights | np.uint64(1))).sum(axis=1, dtype=np.uint64)
        for shift, factor in ((31, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
            mixed = (mixed ^ (mixed >> np.uint64(shift))) * np.uint64(factor)
        mixed ^= mixed >> np.uint64(31)
    return (mixed % np.uint64(bands)).astype(np.int64)
