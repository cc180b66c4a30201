"""Rows of a client's memory-mapped experience arrays, addressed as one, copied only when
a batch is gathered."""

from __future__ import annotations

import numpy as np

from flowerbed.data.blocks import as_ids


class TokenRows:
    """Rows of several token arrays, addressed as one: `refs[i] = (array, row)`; with
    `units`, each array's rows' privacy units (document or user ids)."""

    def __init__(
        self, arrays: list[np.ndarray], refs: np.ndarray, units: list[np.ndarray] | None = None
    ) -> None:
        self.arrays, self.units = arrays, units
        self.refs = np.asarray(refs, dtype=np.int64).reshape(-1, 2)

    @classmethod
    def whole(
        cls, arrays: list[np.ndarray], which: list[int], units: list[np.ndarray] | None = None
    ) -> TokenRows:
        """Every row of the arrays numbered `which`."""
        refs = [np.stack([np.full(len(arrays[a]), a), np.arange(len(arrays[a]))], 1) for a in which]
        return cls(arrays, np.concatenate(refs) if refs else np.zeros((0, 2)), units)

    def __len__(self) -> int:
        return len(self.refs)

    @property
    def seq_len(self) -> int:
        return int(self.arrays[0].shape[1])

    def take(self, index: np.ndarray) -> np.ndarray:
        """The token rows at `index` (in order), as int64 (padding as `PAD_ID`)."""
        refs = self.refs[index]
        out = np.empty((len(refs), self.seq_len), dtype=np.int64)
        for a in np.unique(refs[:, 0]):
            mine = np.flatnonzero(refs[:, 0] == a)
            out[mine] = as_ids(self.arrays[a][refs[mine, 1]])
        return out

    def unit_ids(self) -> np.ndarray:
        """The privacy unit of every row."""
        assert self.units is not None, "rows without privacy units"
        ids = np.empty(len(self.refs), dtype=np.int64)
        for a in np.unique(self.refs[:, 0]):
            mine = np.flatnonzero(self.refs[:, 0] == a)
            ids[mine] = self.units[a][self.refs[mine, 1]]
        return ids
