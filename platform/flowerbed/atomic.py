"""Atomic writes: a reader sees the old file or the new one, never half of either.

`durable=True` also flushes the data and the folder entry to disk before returning, for
what must survive a power cut the moment it is written: the privacy ledger (before an
update leaves the client), the continual state, checkpoints and the metrics log. Caches
that can be rebuilt pass `durable=False`. `private=True` creates the file readable by its
owner only (0600): a node's state (its ledger, continual state, kept optimizer moments)
says what its private data did and is nobody else's to read.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any


def write_atomic(path: Path, data: str | bytes, *, durable: bool, private: bool = False) -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # a leftover keeps its old mode
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o666)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if durable:
        _sync_folder(path.parent)


def write_json_atomic(path: Path, data: Any, *, durable: bool, private: bool = False) -> None:
    """`data` as indented JSON with sorted keys, written atomically."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    write_atomic(path, text, durable=durable, private=private)


def publish_folder(staging: Path, target: Path, *, durable: bool) -> None:
    """Replace `target` by the complete folder `staging` (written beside it) in one rename."""
    if durable:
        for file in staging.rglob("*"):
            if file.is_file():
                with file.open("rb") as f:
                    os.fsync(f.fileno())
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    if durable:
        _sync_folder(target.parent)


def make_private(folder: Path) -> None:
    """`folder` readable by its owner only: 0700 (created if absent), every file in it
    0600 and every folder 0700 (what an older version left open is closed)."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    for path in folder.rglob("*"):
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode) or not mode & (stat.S_IRWXG | stat.S_IRWXO):
            continue
        path.chmod(0o700 if stat.S_ISDIR(mode) else 0o600)


def _sync_folder(folder: Path) -> None:
    """Make a rename inside `folder` durable (POSIX: fsync the directory)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
