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
  two SuperNodes never share one ledger.
- **One ledger per data**: the ledger's mirror (`privacy.ledger`), outside the folder and
  named by the data directory and host, is held with the folder, so two state
  directories for the same data count each other's releases, one at a time.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from flowerbed.atomic import make_private, write_json_atomic

LOCK = ".lock"
IDENTITY = "node_identity.json"
RANKS_SCRATCH = "ranks"
"""Where a round's rank workers get their task (with the release's noise key); what a
crashed round left there is removed when the next Message holds the folder."""
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
def own_state_dir(
    state_dir: Path, data_dir: Path, bound: bool, mirror: Path
) -> Iterator[NodeIdentity]:
    """Hold `state_dir` and the ledger's `mirror` for one Message: private modes, the
    locks, the node's identity (`bound`: refuse a folder bound to another data directory
    or host)."""
    make_private(state_dir)
    mirror.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    mirror_lock = mirror.with_name(mirror.name + ".lock")
    with _locked(state_dir / LOCK, state_dir), _locked(mirror_lock, mirror):
        shutil.rmtree(state_dir / RANKS_SCRATCH, ignore_errors=True)
        yield _identity(state_dir, data_dir, bound)


@contextmanager
def _locked(lock: Path, what: Path) -> Iterator[None]:
    """An exclusive lock on the file `lock`, for `what` (named in the refusal)."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _acquire(fd, what)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _acquire(fd: int, what: Path) -> None:
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                raise StateDirError(
                    f"{what} is held by {holder} and was not released within "
                    f"{LOCK_WAIT:g} s: one process at a time per state directory and per "
                    "data directory; stop the other node, or give this one its own"
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
