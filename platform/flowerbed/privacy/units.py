"""Privacy units: what one ε protects (a sequence, a document, or a person's text).

Unit-level DP-SGD samples whole units and clips the sum of a unit's block gradients as
one, so a unit's whole influence on a step is at most the clipping norm however many
blocks it spans. `Groups` says which rows of a batch belong to which sampled unit; the
clipping code sums per-sequence quantities per unit (`sum`), lays a unit's blocks side by
side as one long sequence where norms need cross terms (`stack`), and hands each unit's
clipping factor back to its blocks (`expand`).
"""

from __future__ import annotations

from typing import Literal

import torch

Unit = Literal["sequence", "document", "user"]
STRENGTH: dict[str, int] = {"sequence": 0, "document": 1, "user": 2}
"""A unit protects at least what every unit before it protects (a person's text holds
their documents, a document its sequences)."""


class Groups:
    """The sampled unit of each row of a batch: `ids[i]` in 0..count-1, rows of one unit
    adjacent (the sampler emits them so)."""

    def __init__(self, ids: torch.Tensor) -> None:
        self.ids = ids
        rows = len(ids)
        sizes = torch.bincount(ids)
        self.count, self.width = len(sizes), int(sizes.max()) if rows else 0
        starts = torch.cumsum(sizes, 0) - sizes
        position = torch.arange(rows, device=ids.device) - starts[ids]
        self.slots = torch.full((self.count, self.width), rows, device=ids.device)
        self.slots[ids, position] = torch.arange(rows, device=ids.device)
        """slots[u, j]: the row of unit u's j-th block, or `rows` (a row of zeros)."""

    def sum(self, per_sequence: torch.Tensor) -> torch.Tensor:
        """[rows, ...] -> [units, ...]: each unit's sum over its blocks."""
        out = per_sequence.new_zeros((self.count, *per_sequence.shape[1:]))
        return out.index_add_(0, self.ids, per_sequence)

    def stack(self, x: torch.Tensor) -> torch.Tensor:
        """[rows, tokens, ...] -> [units, width * tokens, ...]: each unit's blocks as one
        sequence (zeros where a unit has fewer blocks than the widest)."""
        padded = torch.cat([x, x.new_zeros((1, *x.shape[1:]))])
        stacked = padded[self.slots]  # [units, width, tokens, ...]
        return stacked.reshape(self.count, -1, *x.shape[2:])

    def expand(self, per_unit: torch.Tensor) -> torch.Tensor:
        """[units] -> [rows]: each block gets its unit's value."""
        return per_unit[self.ids]


def chunks(groups: torch.Tensor, size: int) -> list[slice]:
    """Row ranges of at most `size` rows that never split a unit (`groups`: sorted ids)."""
    if not size or len(groups) <= size:
        return [slice(0, len(groups))]
    bounds = [*(torch.diff(groups) != 0).nonzero().flatten().add(1).tolist(), len(groups)]
    out, start, end = [], 0, 0
    for bound in bounds:
        if bound - start > size and end > start:
            out.append(slice(start, end))
            start = end
        end = bound
    out.append(slice(start, end))
    return out
