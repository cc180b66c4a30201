"""Token blocks: the fixed-length training unit, with the domain each block came from."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Blocks:
    """`tokens[i]` is one block of `seq_len` token ids; `domains[i]` indexes `domain_names`."""

    tokens: np.ndarray
    domains: np.ndarray
    domain_names: list[str]

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def seq_len(self) -> int:
        return int(self.tokens.shape[1])

    def subset(self, index: np.ndarray) -> Blocks:
        return Blocks(self.tokens[index], self.domains[index], self.domain_names)

    def save(self, folder: Path, name: str) -> None:
        """Write `<name>.tokens.npy`, `<name>.domains.npy` and `<name>.json` under folder."""
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"{name}.tokens.npy", np.ascontiguousarray(self.tokens))
        np.save(folder / f"{name}.domains.npy", np.ascontiguousarray(self.domains))
        (folder / f"{name}.json").write_text(json.dumps({"domain_names": self.domain_names}))

    @classmethod
    def load(cls, folder: Path, name: str) -> Blocks:
        """Memory-map the blocks saved under `folder` (cheap, even for large shards)."""
        tokens_path = folder / f"{name}.tokens.npy"
        if not tokens_path.is_file():
            raise FileNotFoundError(f"no {name} blocks in {folder} (missing {tokens_path.name})")
        meta = json.loads((folder / f"{name}.json").read_text())
        return cls(
            np.load(tokens_path, mmap_mode="r"),
            np.load(folder / f"{name}.domains.npy"),
            meta["domain_names"],
        )


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every token id."""
    return np.dtype(np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32)
