"""SecAgg+ masks: a ChaCha20 keystream under a 256-bit key derived from the full secret.

Flower's `pseudo_rand_gen` folded each secret to a 32-bit seed for numpy's Mersenne
Twister (28 effective bits for a base64 key), so a coordinator that follows the protocol
could search the seeds of a survivor's few unknown pairwise masks in minutes. Here a
mask is the keystream (`flowerbed.keystream`) under HKDF-SHA256 of the whole secret: the
ECDH secret of two neighbours' key pairs for a pairwise mask, the node's 256-bit random
seed for its self mask, each with its own purpose label. Every word depends on every bit
of the secret, and nothing short of the secret predicts one.

Masks are added word by word modulo 2^32 (numpy's uint32 wraps), a chunk at a time, so
masking needs no more memory than the masked array and one chunk.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from flowerbed.keystream import KEY_BYTES, KeyStream

SEED_BYTES = 32
"""A self-mask seed: 256 bits from `os.urandom`."""
CHUNK_WORDS = 1 << 21
"""Masks are drawn and added 8 MiB at a time (large enough for the keystream's threads)."""
SELF_MASK = b"flowerbed secagg+ self mask v1"
PAIRWISE_MASK = b"flowerbed secagg+ pairwise mask v1"

Mask = tuple[KeyStream, int]
"""A mask's keystream and its sign in the sum (+1 adds it, -1 subtracts it)."""


def mask_key(secret: bytes, purpose: bytes) -> bytes:
    """A 256-bit ChaCha20 key from `secret` for one purpose (HKDF-SHA256)."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=purpose)
    return hkdf.derive(secret)


def self_mask(seed: bytes) -> KeyStream:
    """The keystream of a node's self mask (the seed the coordinator rebuilds at unmask)."""
    return KeyStream(mask_key(seed, SELF_MASK))


def pairwise_mask(private_key_pem: bytes, public_key_pem: bytes) -> KeyStream:
    """The keystream two neighbours share: ECDH of one's private key with the other's
    public key (the same from either side)."""
    private = serialization.load_pem_private_key(private_key_pem, password=None)
    public = serialization.load_pem_public_key(public_key_pem)
    if not isinstance(private, ec.EllipticCurvePrivateKey) or not isinstance(
        public, ec.EllipticCurvePublicKey
    ):
        raise ValueError("SecAgg+ masks need elliptic-curve keys")
    return KeyStream(mask_key(private.exchange(ec.ECDH(), public), PAIRWISE_MASK))


def pairwise_sign(owner: int, neighbour: int) -> int:
    """The sign with which `owner` adds the mask it shares with `neighbour`: the larger
    id adds it and the smaller subtracts it, so the two cancel in the sum."""
    return 1 if owner > neighbour else -1


def apply_masks(vector: np.ndarray, masks: Sequence[Mask]) -> None:
    """Add each mask (times its sign) to the uint32 `vector`, in place, modulo 2^32; each
    keystream moves on by the vector's size."""
    if vector.dtype != np.uint32 or not vector.flags.c_contiguous:
        raise ValueError("masks apply to a contiguous uint32 array")
    flat = vector.reshape(-1)
    scratch = np.empty(min(CHUNK_WORDS, flat.size), np.uint32)
    for start, end in _chunks(flat.size):
        piece, buffer = flat[start:end], scratch[: end - start]
        for stream, sign in masks:
            stream.fill(buffer)
            (np.add if sign > 0 else np.subtract)(piece, buffer, out=piece)


def _chunks(size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, size, CHUNK_WORDS):
        yield start, min(start + CHUNK_WORDS, size)
