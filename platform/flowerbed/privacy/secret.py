"""The node's secret: 256 random bits from the OS, kept in its state directory, never sent.

DP-SGD's guarantee assumes that nobody who sees an update knows its noise or which
records its steps sampled. Every such draw comes from a key derived from this secret by a
keyed hash (HMAC-SHA256) of what the draw is for and of the release's nonce (a fresh
random number the ledger writes before the release, `privacy.ledger`): the noise and the
replay reservoir from a ChaCha20 keystream of the whole 256-bit key (`flowerbed.keystream`),
the Poisson sample from numpy's counter-based Philox generator keyed with all of it (128-bit
key, 256-bit counter). No draw goes through a 32- or 64-bit seed, which an observer could
enumerate. A round re-run after a crash finds its nonce in the ledger and draws the same
again; anything else (another node, a restored backup, a replayed round number) draws
afresh, and nobody without the secret can reproduce any of it.

The file is created on first use with mode 0600 and read as it is afterwards. Whoever
holds it and the ledger can recompute every noise draw of the node's life: back it up
with the ledger, protect it like a private key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path

import numpy as np

from flowerbed.keystream import KeyStream

FILENAME = "node_secret"
SECRET_BYTES = 32


class NodeSecretError(ValueError):
    """The secret file is unusable; the message says what to do."""


class NodeSecret:
    """Keys derived from the node's secret; `repr` never shows it."""

    def __init__(self, key: bytes) -> None:
        if len(key) < SECRET_BYTES:
            raise NodeSecretError(f"a node secret needs {SECRET_BYTES} bytes, got {len(key)}")
        self._key = key

    def __repr__(self) -> str:
        return "NodeSecret(<hidden>)"

    @classmethod
    def open(cls, state_dir: Path) -> NodeSecret:
        """The secret in `state_dir`, created (256 bits from `os.urandom`, mode 0600) if absent."""
        path = state_dir / FILENAME
        if not path.exists():
            _create(path)
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise NodeSecretError(
                f"the node secret {path} is readable by other users: run `chmod 600 {path}`"
            )
        key = path.read_bytes()
        if len(key) != SECRET_BYTES:
            raise NodeSecretError(
                f"the node secret {path} holds {len(key)} bytes, not {SECRET_BYTES}: restore it "
                "from the state directory's backup (a new one makes fresh, equally private noise, "
                "but a round re-run after a crash would no longer repeat its draws)"
            )
        return cls(key)

    def digest(self, *purpose: str | int) -> bytes:
        """HMAC-SHA256 of the purpose, e.g. `("noise", nonce)`: a 256-bit key."""
        message = "/".join(str(p) for p in purpose).encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def stream(self, *purpose: str | int) -> KeyStream:
        """The ChaCha20 keystream keyed by the digest of `purpose`."""
        return KeyStream(self.digest(*purpose))

    def generator(self, *purpose: str | int) -> np.random.Generator:
        """A numpy generator keyed by the whole digest of `purpose`: Philox with its first
        128 bits as the key and the other 128 as the counter's start."""
        return keyed_generator(self.digest(*purpose))


def keyed_generator(digest: bytes) -> np.random.Generator:
    """numpy's Philox generator keyed by a 256-bit digest (key 128 bits, counter 128)."""
    key, counter = (int.from_bytes(digest[i : i + 16], "little") for i in (0, 16))
    return np.random.Generator(np.random.Philox(key=key, counter=counter))


def _create(path: Path) -> None:
    """Write a new secret atomically and durably; another process's secret wins a race."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, os.urandom(SECRET_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(staging, path)  # fails if another process created it first: keep theirs
    except FileExistsError:
        pass
    finally:
        staging.unlink()
