"""Updates to integers and back: what a client masks and what the coordinator unmasks.

A client clips each coordinate of its update to +-clipping_range, scales it by its weight
factor (its weight over `max_weight`, quantized) and maps [-range, range] onto
[0, 2^bits] with stochastic rounding (unbiased: floor(y + u), u uniform in [0, 1)). So
every coordinate, and the weight factor, is at most 2^bits, and the sum of n clients at
most n x 2^bits: below 2^32 as long as n x 2^bits < 2^32 (`config/secure.py` checks).
That holds for honest clients: a hostile one can add any word to its masked update, and
nothing here or in the sum bounds it (docs/secure-aggregation.md, "What it gives up").

The rounding draws u from numpy's PCG64 seeded by the operating system: it needs to be
unbiased, not secret (the masks keep the result secret). Flower's `quantize` drew it from
numpy's global generator. The arithmetic runs in float64 a chunk at a time: at 28 bits a
float32 would leave no bits for the fraction.
"""

from __future__ import annotations

import numpy as np

from flowerbed.secagg.masks import CHUNK_WORDS


def weight_factor(weight: float, max_weight: float, bits: int) -> int:
    """The client's weight as an integer in [0, 2^bits]: weight / max_weight, the weight
    clamped to [0, max_weight] first (a client cannot claim more than the round allows)."""
    ratio = min(max(float(weight), 0.0), max_weight) / max_weight
    return round(ratio * (1 << bits))


def quantize(
    update: np.ndarray, factor: int, clipping_range: float, bits: int, rng: np.random.Generator
) -> np.ndarray:
    """The update (float, any shape) as uint32 in [0, 2^bits], scaled by `factor` / 2^bits."""
    levels = 1 << bits
    scale, step = factor / levels, levels / (2 * clipping_range)
    flat, out = update.reshape(-1), np.empty(update.size, np.uint32)
    for start in range(0, flat.size, CHUNK_WORDS):
        end = min(start + CHUNK_WORDS, flat.size)
        y = np.clip(flat[start:end], -clipping_range, clipping_range, dtype=np.float64)
        y *= scale
        y += clipping_range
        y *= step
        y += rng.random(end - start)
        np.floor(y, out=y)
        np.minimum(y, levels, out=y)  # x = +range can land a hair above 2^bits
        out[start:end] = y
    return out.reshape(update.shape)


def dequantize_mean(
    total: np.ndarray, survivors: int, weight_total: int, clipping_range: float, bits: int
) -> np.ndarray:
    """The weighted mean update (float32) from the unmasked sum of `survivors` quantized
    updates whose weight factors add up to `weight_total` (> 0).

    Each client's coordinate is (w x + range) x 2^bits / (2 range) for its weight w, so the
    sum is (sum of w x + survivors x range) x 2^bits / (2 range), and the mean divides the
    sum of w x by the sum of w, weight_total / 2^bits.
    """
    levels = 1 << bits
    weighted = total.astype(np.float64) * (2 * clipping_range / levels)
    weighted -= survivors * clipping_range
    weighted *= levels / weight_total
    return weighted.astype(np.float32)
