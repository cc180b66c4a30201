"""Limited evaluation reads blocks from the whole set: splits are ordered by domain, so
the first batches alone would measure one domain (and a by-domain federation unfairly)."""

from __future__ import annotations

import numpy as np

from flowerbed.model.runtime import batches


def blocks(n: int) -> np.ndarray:
    """n blocks of 4 tokens; block i holds the token i."""
    return np.arange(n)[:, None].repeat(4, axis=1)


def test_limited_evaluation_spreads_its_batches_from_the_first_block_to_the_last():
    picked = np.concatenate(list(batches(blocks(100), 8, 2)))[:, 0]
    assert len(picked) == 16 and len(set(picked.tolist())) == 16
    assert picked[0] == 0 and picked[-1] == 99
    assert np.all(np.diff(picked) >= 6)  # evenly spaced: 99 / 15 apart


def test_unlimited_or_large_limits_read_every_block_once_in_order():
    for limit in (0, 13, 50):
        picked = np.concatenate(list(batches(blocks(100), 8, limit)))[:, 0]
        assert picked.tolist() == list(range(100))
