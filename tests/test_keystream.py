"""The keyed stream every secret draw comes from: ChaCha20, read in words, whole key used."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from flowerbed.keystream import PARALLEL_BYTES, KeyStream

KEY = bytes(range(32))


def reference(key: bytes, nbytes: int) -> np.ndarray:
    stream = Cipher(algorithms.ChaCha20(key, bytes(16)), None).encryptor().update(bytes(nbytes))
    return np.frombuffer(stream, dtype=np.uint32)


def test_words_read_in_any_pieces_are_the_chacha20_keystream_front_to_back():
    sizes = [1, 7, 15, 3, PARALLEL_BYTES // 4 + 5, 2]  # unaligned, and one split over threads
    stream = KeyStream(KEY)
    words = np.concatenate([stream.words(n) for n in sizes])
    assert np.array_equal(words, reference(KEY, 4 * sum(sizes)))
    assert stream.position == 4 * sum(sizes)


def test_every_bit_of_the_key_changes_the_words():
    base = KeyStream(KEY).words(8)
    for bit in range(256):
        flipped = bytearray(KEY)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert not np.array_equal(KeyStream(bytes(flipped)).words(8), base), bit


def test_a_short_key_is_refused_and_the_key_is_never_shown():
    with pytest.raises(ValueError, match="32-byte key"):
        KeyStream(bytes(8))
    assert KEY.hex() not in repr(KeyStream(KEY)) and "hidden" in repr(KeyStream(KEY))


def test_noise_made_ahead_in_the_background_is_the_same_noise_in_the_same_order():
    from flowerbed.privacy.secret_noise import KeyedGaussian

    sizes = [1000, 1000, 7, 4096, 1000]  # a step's size repeats; a change reads on in order
    plain, ahead = KeyedGaussian(KEY, ahead=False), KeyedGaussian(KEY, ahead=True)
    for size in sizes:
        expected = plain.fill_(torch.empty(size), 2.0)
        assert torch.equal(ahead.fill_(torch.empty(size), 2.0), expected)
