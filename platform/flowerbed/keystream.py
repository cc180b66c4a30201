"""Random words from a 256-bit key: the ChaCha20 keystream (OpenSSL, through `cryptography`).

Everything a privacy or security promise rests on (DP noise, Poisson samples, the replay
reservoir, SecAgg+ masks) is drawn from a key of 256 bits, never from a seed that a
generator folds to fewer: torch's CPU generator keeps 32 bits of its seed, Flower's
`pseudo_rand_gen` folds its key to 32 (28 effective), and whoever can enumerate the seed
can subtract the noise or the mask. ChaCha20's keystream is indistinguishable from random
to anyone without the key, every word depends on every key bit, and any position in it
can be reached directly (its block counter), so a large draw is split over threads
(OpenSSL releases the GIL).

Why our own module: numpy and torch have no cryptographic bit generator, and `cryptography`
(a dependency already) has the cipher but no "next n words" interface.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

KEY_BYTES = 32
NONCE_BYTES = 12
BLOCK = 64
"""ChaCha20's block: 64 bytes of keystream per counter value."""
MAX_BLOCKS = 2**32
"""The 32-bit block counter: 256 GiB of keystream per (key, nonce)."""
PARALLEL_BYTES = 8 << 20
"""Draws at least this large are split over threads."""
THREADS = 4


class KeyStream:
    """The keystream of one (key, nonce), read front to back in 32-bit words."""

    def __init__(self, key: bytes, nonce: bytes = bytes(NONCE_BYTES)) -> None:
        if len(key) != KEY_BYTES or len(nonce) != NONCE_BYTES:
            raise ValueError(
                f"a keystream needs a {KEY_BYTES}-byte key and a {NONCE_BYTES}-byte nonce, "
                f"got {len(key)} and {len(nonce)}"
            )
        self._key, self._nonce = key, nonce
        self.position = 0
        """Bytes of keystream read so far."""

    def __repr__(self) -> str:
        return f"KeyStream(<hidden>, position={self.position})"

    def words(self, count: int) -> np.ndarray:
        """The next `count` 32-bit words of the stream (uint32, little-endian)."""
        out = np.empty(count, dtype=np.uint32)
        self.fill(out)
        return out

    def fill(self, out: np.ndarray) -> None:
        """Write the next `out.nbytes` bytes of the stream into the contiguous array `out`."""
        if not out.flags.c_contiguous:
            raise ValueError("KeyStream.fill needs a contiguous array")
        view = out.reshape(-1).view(np.uint8).data
        start, end = self.position, self.position + out.nbytes
        if -(-end // BLOCK) > MAX_BLOCKS:
            raise ValueError("this keystream is exhausted (256 GiB): derive a new key")
        pieces = _pieces(start, end)
        if len(pieces) == 1:
            self._write(view, start, *pieces[0])
        else:
            with ThreadPoolExecutor(len(pieces)) as pool:
                list(pool.map(lambda p: self._write(view, start, *p), pieces))
        self.position = end

    def _write(self, view: memoryview, origin: int, start: int, end: int) -> None:
        """Keystream bytes [start, end) into `view` (which begins at stream byte `origin`)."""
        block, skip = divmod(start, BLOCK)
        cipher = Cipher(algorithms.ChaCha20(self._key, _counter(block) + self._nonce), None)
        encryptor = cipher.encryptor()
        if skip:
            encryptor.update(bytes(skip))
        encryptor.update_into(bytes(end - start), view[start - origin : end - origin])


def _counter(block: int) -> bytes:
    return block.to_bytes(4, "little")


def _pieces(start: int, end: int) -> list[tuple[int, int]]:
    """[start, end) split into up to THREADS block-aligned pieces (one when small)."""
    if end - start < PARALLEL_BYTES:
        return [(start, end)]
    step = -(-(end - start) // THREADS // BLOCK) * BLOCK
    bounds = [start, *range(-(-start // BLOCK) * BLOCK + step, end, step), end]
    return [(a, b) for a, b in pairwise(bounds) if b > a]
