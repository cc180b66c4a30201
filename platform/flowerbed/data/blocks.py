"""Token blocks: the fixed-length training unit, with the domain each block came from.

Packed by document (`data.packing=documents`), a block never crosses a document: each
document's last block is padded with the dtype's largest value (`pad_value`), which no
token id reaches, and the blocks carry the document (and the user, where the corpus
says) they belong to, the privacy units of unit-level DP. As int64 batches
(`as_ids`) the padding is `PAD_ID`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PAD_ID = -1
"""Padding in an int64 batch: neither an input token nor a target."""


@dataclass
class Blocks:
    """`tokens[i]` is one block of `seq_len` token ids; `domains[i]` indexes `domain_names`."""

    tokens: np.ndarray
    domains: np.ndarray
    domain_names: list[str]
    documents: np.ndarray | None = None
    """Packed by document: the document of each block (a stable 63-bit id). None: blocks
    run across documents (`data.packing=stream`)."""
    users: np.ndarray | None = None
    """Packed by document, where the corpus names users: the user of each block."""

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def seq_len(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def padded(self) -> bool:
        """Whether blocks may end in padding (packed by document)."""
        return self.documents is not None

    def units(self, unit: str) -> np.ndarray | None:
        """The privacy unit of each block: None for `sequence` (each block its own)."""
        if unit == "sequence":
            return None
        ids = self.documents if unit == "document" else self.users
        if ids is None:
            raise ValueError(
                f"privacy.unit={unit} needs blocks packed by document"
                + (" with users (data.user_field, or a folder per user)" if unit == "user" else "")
            )
        return ids

    def subset(self, index: np.ndarray) -> Blocks:
        documents, users = (None if a is None else a[index] for a in (self.documents, self.users))
        return Blocks(self.tokens[index], self.domains[index], self.domain_names, documents, users)

    def save(self, folder: Path, name: str) -> None:
        """Write `<name>.tokens.npy`, `<name>.domains.npy` (`.documents`, `.users` when
        packed by document) and `<name>.json` under folder."""
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"{name}.tokens.npy", np.ascontiguousarray(self.tokens))
        np.save(folder / f"{name}.domains.npy", np.ascontiguousarray(self.domains))
        for field in ("documents", "users"):
            if getattr(self, field) is not None:
                np.save(folder / f"{name}.{field}.npy", np.ascontiguousarray(getattr(self, field)))
        (folder / f"{name}.json").write_text(json.dumps({"domain_names": self.domain_names}))

    @classmethod
    def load(cls, folder: Path, name: str) -> Blocks:
        """Memory-map the blocks saved under `folder` (cheap, even for large shards)."""
        tokens_path = folder / f"{name}.tokens.npy"
        if not tokens_path.is_file():
            raise FileNotFoundError(f"no {name} blocks in {folder} (missing {tokens_path.name})")
        meta = json.loads((folder / f"{name}.json").read_text())
        optional = {
            field: np.load(path) if (path := folder / f"{name}.{field}.npy").is_file() else None
            for field in ("documents", "users")
        }
        return cls(
            np.load(tokens_path, mmap_mode="r"),
            np.load(folder / f"{name}.domains.npy"),
            meta["domain_names"],
            **optional,
        )


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every token id and the padding value."""
    return np.dtype(np.uint16 if vocab_size < np.iinfo(np.uint16).max else np.int32)


def pad_value(dtype: np.dtype) -> int:
    """Padding as stored: the dtype's largest value, above every token id."""
    return int(np.iinfo(dtype).max)


def as_ids(tokens: np.ndarray) -> np.ndarray:
    """Stored blocks as an int64 batch, padding as `PAD_ID`."""
    ids = tokens.astype(np.int64)
    ids[tokens == pad_value(tokens.dtype)] = PAD_ID
    return ids
