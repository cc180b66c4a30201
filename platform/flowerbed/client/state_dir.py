"""One process, one node, one owner: how a node holds its state directory.

The state directory holds what the node's privacy rests on (its secret, its ledger) and
what its private data did (exact losses, the continual state, kept optimizer moments).
- **Only its owner reads it**: the folder is 0700 and its files 0600 (files an older
  version left readable are made so when the node opens it).
- **One process at a time**: a Message's work holds an exclusive lock on the folder
  (`flock`), so two processes can never write-ahead the same release or lose each
  other's ledger entries. A second process waits for it, up to `LOCK_WAIT`, then stops
  with a sentence naming the holder.
- **One node**: `node_identity.json` binds the folder to the node's data directory and
  host the first time; a deployed node pointed at a folder bound to another refuses, so
  two SuperNodes never share one ledger. Its random id also names the ledger's mirror
  (`privacy.ledger`), which lives outside the folder.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from flowerbed.atomic import make_private, write_json_atomic

LOCK = ".lock"
IDENTITY = "node_identity.json"
LOCK_WAIT = 600.0
"""Seconds a second process waits for the state directory before it gives up."""


class StateDirError(RuntimeError):
    """The state directory is held, or belongs to another node; the message says which."""


@dataclass(frozen=True)
class NodeIdentity:
    id: str
    """128 random bits (hex), made once: they name the ledger's mirror."""
    data_dir: str
    host: str


@contextmanager
def own_state_dir(state_dir: Path, data_dir: Path, bound: bool) -> Iterator[NodeIdentity]:
    """Hold `state_dir` for one Message: private modes, the lock, the node's identity
    (`bound`: refuse a folder bound to another data directory or host)."""
    make_private(state_dir)
    with _locked(state_dir):
        yield _identity(state_dir, data_dir, bound)


@contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    fd = os.open(state_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _acquire(fd, state_dir)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _acquire(fd: int, state_dir: Path) -> None:
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                raise StateDirError(
                    f"the state directory {state_dir} is held by {holder} and was not "
                    f"released within {LOCK_WAIT:g} s: one process per state directory; "
                    "stop the other node, or give this one its own state-dir"
                ) from None
            time.sleep(0.2)


def _identity(state_dir: Path, data_dir: Path, bound: bool) -> NodeIdentity:
    """The folder's identity, made on first use; a bound node checks it is its own."""
    path = state_dir / IDENTITY
    here = NodeIdentity(os.urandom(16).hex(), str(data_dir.resolve()), socket.gethostname())
    if not path.is_file():
        write_json_atomic(path, asdict(here), durable=True, private=True)
        return here
    identity = NodeIdentity(**json.loads(path.read_text()))
    if bound and (identity.data_dir, identity.host) != (here.data_dir, here.host):
        raise StateDirError(
            f"the state directory {state_dir} belongs to the node whose data is "
            f"{identity.data_dir} on {identity.host}, not to this one ({here.data_dir} on "
            f"{here.host}): two nodes sharing it would mix their ledgers; give this node "
            f"its own state-dir (if this node's data or host really moved, write the new "
            f"ones into {path})"
        )
    return identity
