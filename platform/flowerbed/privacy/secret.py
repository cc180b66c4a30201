"""The node's secret: 256 random bits from the OS, kept in its state directory, never sent.

DP-SGD's guarantee assumes that nobody who sees an update knows its noise or which
records its steps sampled. Every such draw is seeded from this secret through a keyed
hash (HMAC-SHA256) of what the draw is for, so the same node re-running a round after a
crash draws the same noise (resume stays exact), while another node, a fresh state
directory, the server or anyone who knows the run's config cannot reproduce it.

The file is created on first use with mode 0600 and read as it is afterwards. Whoever
holds it can recompute every noise draw of the node's life: back it up with the ledger,
protect it like a private key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path

import numpy as np

FILENAME = "node_secret"
SECRET_BYTES = 32


class NodeSecretError(ValueError):
    """The secret file is unusable; the message says what to do."""


class NodeSecret:
    """Seeds derived from the node's secret; `repr` never shows the key."""

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
        """HMAC-SHA256 of the purpose, e.g. `("noise", release, round)`: 32 bytes."""
        message = "/".join(str(p) for p in purpose).encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def words(self, *purpose: str | int) -> list[int]:
        """The digest as eight 32-bit words: entropy for numpy's `SeedSequence`."""
        return np.frombuffer(self.digest(*purpose), dtype="<u4").tolist()

    def generator(self, *purpose: str | int) -> np.random.Generator:
        """A numpy generator seeded with the full 256-bit digest of `purpose`."""
        return np.random.default_rng(np.random.SeedSequence(self.words(*purpose)))

    def torch_seed(self, *purpose: str | int) -> int:
        """A 63-bit seed for a torch generator (torch seeds take 64 bits at most)."""
        return int.from_bytes(self.digest(*purpose)[:8], "little") >> 1


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
