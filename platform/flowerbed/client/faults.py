"""Simulation only: clients that misbehave on purpose, for tests and robustness studies.

The faults come from the simulation's own config (`faults`), handed to the simulated nodes
it names; the server never sends them, a deployed SuperNode never reads them, and
`flowerbed deploy` refuses a config that sets them. Each kind changes what an honest
round produced, just before the reply leaves.
"""

from __future__ import annotations

import dataclasses

import torch

from flowerbed.config.robustness import FaultsConfig
from flowerbed.protocol import TrainReply

Weights = dict[str, torch.Tensor]


def misbehaves(faults: FaultsConfig | None, partition_id: int) -> bool:
    return faults is not None and faults.enabled and partition_id in faults.clients


class Crashed(RuntimeError):
    """A simulated client that dies when asked to train (`faults=crash`)."""


def crash_if_asked(faults: FaultsConfig | None, partition_id: int) -> None:
    if misbehaves(faults, partition_id) and faults.kind == "crash":
        raise Crashed(f"client {partition_id} crashed on purpose (faults=crash)")


def killed_rank(faults: FaultsConfig | None, partition_id: int) -> int | None:
    """`faults=rank_crash`: the rank of this node's rounds that dies (rank 1), else None."""
    if misbehaves(faults, partition_id) and faults.kind == "rank_crash":
        return 1
    return None


def misbehave(
    faults: FaultsConfig, reply: TrainReply, trained: Weights, received: Weights, round_: int
) -> tuple[TrainReply, Weights]:
    """The faulty reply and weights of `faults.kind`, from the honest ones."""
    kind, scale = faults.kind, faults.scale
    if kind == "inflated_examples":
        return dataclasses.replace(reply, num_examples=int(reply.num_examples * scale)), trained
    floats = [name for name, t in trained.items() if t.is_floating_point()]
    update = {name: trained[name].float() - received[name].float() for name in floats}
    faulty = dict(trained)
    if kind == "non_finite":
        first = trained[floats[0]].clone()
        first.view(-1)[0] = float("nan")
        faulty[floats[0]] = first
    elif kind == "wrong_shape":
        name = next(n for n in floats if trained[n].dim() and trained[n].shape[0] > 1)
        faulty[name] = trained[name][:-1].clone()
    else:
        faulty |= {
            name: received[name].float() + step
            for name, step in _moved(kind, scale, update, round_).items()
        }
    return reply, faulty


def _moved(kind: str, scale: float, update: Weights, round_: int) -> Weights:
    """The update a hostile client sends in place of its own."""
    if kind == "scaled":
        return {name: scale * step for name, step in update.items()}
    if kind == "sign_flip":
        return {name: -step for name, step in update.items()}
    generator = torch.Generator().manual_seed(round_)  # "random": noise, `scale` x its norm
    norm = float(torch.sqrt(sum(step.double().pow(2).sum() for step in update.values())))
    noise = {name: torch.randn(step.shape, generator=generator) for name, step in update.items()}
    size = float(torch.sqrt(sum(n.double().pow(2).sum() for n in noise.values())))
    return {name: n * (scale * norm / size) for name, n in noise.items()}
