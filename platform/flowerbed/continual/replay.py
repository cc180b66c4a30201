"""The replay buffer: an Avalanche storage policy over references into the client's data.

Each experience enters Avalanche as an `AvalancheDataset` of (experience, row) references
in a stream made by `benchmark_from_datasets`, and the policy (`ReservoirSamplingBuffer`
or `ExperienceBalancedBuffer`) picks what to keep. The buffer is stored as those
references plus the reservoir weights, so it survives restarts and never holds text.

Importing Avalanche costs about 25 s, so it happens only in a round where the buffer
must take in a new experience; every other round reads the stored references.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np
import torch

from flowerbed.config import ContinualConfig

log = logging.getLogger(__name__)


class ReservoirDraws(Protocol):
    """Where the reservoir's random draws come from (`client/randomness.py` chooses)."""

    def torch_state(self, experience: int) -> torch.Tensor:
        """The state torch's global generator draws experience `experience`'s weights
        with (Avalanche's reservoir calls `torch.rand`)."""
        ...


class References(torch.utils.data.Dataset):
    """(experience, row) pairs: what the buffer keeps instead of records."""

    def __init__(self, refs: np.ndarray) -> None:
        self.refs = torch.as_tensor(np.asarray(refs, dtype=np.int64).reshape(-1, 2))

    @classmethod
    def experience(cls, index: int, size: int) -> References:
        return cls(np.stack([np.full(size, index), np.arange(size)], 1))

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.refs[i]


def buffer_refs(buffer: dict[str, Any] | None) -> np.ndarray:
    """Every reference the stored buffer holds: [n, 2] (experience, row)."""
    refs = [ref for g in buffer["groups"] for ref in g["refs"]] if buffer else []
    return np.asarray(refs, dtype=np.int64).reshape(-1, 2)


def update_buffer(
    buffer: dict[str, Any] | None,
    cfg: ContinualConfig,
    sizes: list[int],
    draws: ReservoirDraws,
) -> dict[str, Any]:
    """The buffer holding experiences 0..len(sizes)-1 (`sizes`: their training records).

    Experiences already in the stored buffer are kept as they are; a buffer made with
    other settings, or ahead of `sizes` (a resumed run), is rebuilt from the start.
    Every experience's reservoir draw comes from `draws.torch_state(experience)`, so a
    rebuild gives the same buffer.
    """
    same = buffer is not None and (buffer["policy"], buffer["max_size"]) == (
        cfg.policy,
        cfg.buffer_size,
    )
    absorbed = buffer["absorbed"] if same and buffer["absorbed"] <= len(sizes) else 0
    if same and absorbed == len(sizes):
        return buffer
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.utils import AvalancheDataset

    storage = storage_policy(cfg.policy)
    policy = storage.build(cfg.buffer_size, buffer["groups"] if absorbed else [])
    fresh = [AvalancheDataset([References.experience(k, sizes[k])]) for k in range(len(sizes))]
    stream = benchmark_from_datasets(train=fresh).train_stream
    for k in range(absorbed, len(sizes)):
        with torch.random.fork_rng():
            torch.set_rng_state(draws.torch_state(k))
            policy.post_adapt(None, stream[k])
    stored = _store(storage.reservoirs(policy), cfg, len(sizes))
    log.info(
        "replay buffer: %d records from %d experience(s) (%s)",
        len(buffer_refs(stored)),
        len(sizes),
        cfg.policy,
    )
    return stored


class _Reservoir:
    """`reservoir`: Avalanche's ReservoirSamplingBuffer, a uniform sample of all records."""

    def build(self, size: int, groups: list[dict[str, Any]]) -> Any:
        from avalanche.training.storage_policy import ReservoirSamplingBuffer

        policy = ReservoirSamplingBuffer(size)
        if groups:
            _fill(policy, groups[0])
        return policy

    def reservoirs(self, policy: Any) -> list[Any]:
        return [policy]

    def fill(self, size: int, past: list[int]) -> int:
        """Records a full buffer holds after experiences of sizes `past`."""
        return min(size, sum(past))


class _ExperienceBalanced:
    """`experience_balanced`: Avalanche's ExperienceBalancedBuffer, equal room per experience."""

    def build(self, size: int, groups: list[dict[str, Any]]) -> Any:
        from avalanche.training.storage_policy import (
            ExperienceBalancedBuffer,
            ReservoirSamplingBuffer,
        )

        policy = ExperienceBalancedBuffer(size)
        # Avalanche has no restore path: set the state its post_adapt reads and writes.
        policy._num_exps = len(groups)
        for g, (group, room) in enumerate(
            zip(groups, policy.get_group_lengths(max(len(groups), 1)), strict=False)
        ):
            policy.buffer_groups[g] = _fill(ReservoirSamplingBuffer(room), group)
        return policy

    def reservoirs(self, policy: Any) -> list[Any]:
        return list(policy.buffer_groups.values())

    def fill(self, size: int, past: list[int]) -> int:
        """Records a full buffer holds after `past` (Avalanche's split into groups)."""
        if not past:
            return 0
        share, extra = divmod(size, len(past))
        return sum(min(share + (g < extra), n) for g, n in enumerate(past))


STORAGE_POLICIES = {"reservoir": _Reservoir, "experience_balanced": _ExperienceBalanced}


def storage_policy(name: str) -> _Reservoir | _ExperienceBalanced:
    """The storage policy `continual.policy` names: the one place it is looked up."""
    return STORAGE_POLICIES[name]()


def _fill(reservoir: Any, group: dict[str, Any]) -> Any:
    from avalanche.benchmarks.utils import AvalancheDataset

    reservoir.buffer = AvalancheDataset([References(np.asarray(group["refs"]))])
    reservoir._buffer_weights = torch.tensor(group["weights"], dtype=torch.float32)
    return reservoir


def _store(reservoirs: list[Any], cfg: ContinualConfig, absorbed: int) -> dict[str, Any]:
    groups = [
        {
            "refs": [r.buffer[i].tolist() for i in range(len(r.buffer))],
            "weights": r._buffer_weights.tolist(),
        }
        for r in reservoirs
    ]
    return {
        "policy": cfg.policy,
        "max_size": cfg.buffer_size,
        "absorbed": absorbed,
        "groups": groups,
    }
