"""A client round's local training on several ranks of one node.

The supervising process (the ClientApp's) plans the round as always: the continual
state, the privacy guard's permit and the node's randomness are its alone. It then
draws every batch of the round itself, from the node's sampler, exactly the batches one
process would draw (`RoundDraws`): under DP-SGD one Poisson draw over the node's records
per step, which the ranks split among them. Each rank rebuilds the model from the
weights received, trains on its share, and sums gradients with the others every step;
under DP-SGD the clipped sums meet before the one noise draw (`privacy/across_ranks.py`).
Rank 0 saves the kept inner optimizer state and returns the weights and the loss; the
supervisor then records the round in the ledger, once, as for one rank.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flowerbed.client.faults import killed_rank
from flowerbed.client.node import Node
from flowerbed.client.randomness import RunSeeded, SecretSeeded
from flowerbed.client.rank_processes import run_on_ranks
from flowerbed.client.round_plan import RoundPlan
from flowerbed.client.schedule import Schedule
from flowerbed.client.state_dir import RANKS_SCRATCH
from flowerbed.client.trainer import TrainResult, make_trainer
from flowerbed.config import PrivacyConfig, TrainConfig
from flowerbed.continual.pool import TrainingPool
from flowerbed.model.factory import modeling_module
from flowerbed.model.inner_state import restore_inner_state, save_inner_state
from flowerbed.model.ranks import ProcessGroupRanks
from flowerbed.privacy.cyclic import Cycle
from flowerbed.privacy.guard import RoundPermit
from flowerbed.privacy.secret_noise import NoiseKey
from flowerbed.protocol import ModelSpec, TrainInstructions

Weights = dict[str, torch.Tensor]


@dataclass
class RoundDraws:
    """Every batch of a round, drawn up front by the node's supervisor; the ranks read
    them through the pool's interface, so the trainers cannot tell the difference."""

    padded: bool
    seq_len: int
    expected: float
    """The node's expected Poisson batch (DP-SGD's noise is scaled by the node's batch)."""
    fixed: np.ndarray | None
    poisson: list[tuple[np.ndarray, np.ndarray | None]]

    @classmethod
    def of(
        cls, pool: TrainingPool, cfg: TrainConfig, private: bool, rng: np.random.Generator
    ) -> RoundDraws:
        steps, size = cfg.local_steps, cfg.batch_size
        return cls(
            padded=pool.padded,
            seq_len=pool.seq_len,
            expected=pool.expected_batch(size) if private else float(size),
            fixed=None if private else pool.fixed_batches(steps, size, rng),
            poisson=[pool.poisson_batch(size, rng) for _ in range(steps)] if private else [],
        )

    def fixed_batches(self, steps: int, batch_size: int, rng: object) -> np.ndarray:
        assert self.fixed is not None
        return self.fixed

    def poisson_batch(self, batch_size: int, rng: object) -> tuple[np.ndarray, np.ndarray | None]:
        return self.poisson.pop(0)

    def expected_batch(self, batch_size: int) -> float:
        return self.expected


@dataclass
class RankTask:
    """What every rank needs to train the round; nothing of the node's secret but the
    release's noise key, which stays in the node's own private temporary folder."""

    spec: ModelSpec
    weights: Weights
    base_model: str | None
    train: TrainConfig
    privacy: PrivacyConfig
    permit: RoundPermit
    noise: NoiseKey | None
    draws: RoundDraws
    schedule: Schedule
    state: tuple[Path, int]
    """(the node's state directory, the round): for kept inner and noise state."""
    keep_inner_state: bool
    classes: str
    """The fingerprint of the sampling cycle's classes (banded noise's kept buffers)."""
    killed_rank: int | None = None
    """Simulation only (`faults=rank_crash`): this rank dies before its first step."""


def train_on_ranks(
    job: TrainInstructions,
    weights: Weights,
    node: Node,
    plan: RoundPlan,
    permit: RoundPermit,
    draws: RunSeeded | SecretSeeded,
    device: torch.device,
    cycle: Cycle,
) -> tuple[TrainResult, Weights]:
    """The round trained on `node.ranks` ranks: the loss and the new shared weights. The
    noise key is drawn first, then the batches, in the order one process draws them."""
    private = permit.noise_multiplier is not None
    noise = draws.noise() if private else None
    train = job.train.in_round(job.round)
    task = RankTask(
        spec=job.model,
        weights=weights,
        base_model=node.base_model,
        train=train,
        privacy=job.privacy,
        permit=permit,
        noise=noise,
        draws=RoundDraws.of(plan.pool, train, private, draws.sampler),
        schedule=plan.schedule,
        state=(node.state_dir, job.round),
        classes=cycle.fingerprint,
        keep_inner_state=job.keep_inner_state,
        killed_rank=killed_rank(node.faults, node.partition_id),
    )
    threads = max(1, (node.threads or os.cpu_count() or 1) // node.ranks)
    what = f"client {node.partition_id}'s round {job.round}"
    preload = (__name__, "flowerbed.client.local_round", modeling_module(task.spec.architecture))
    scratch = node.state_dir / RANKS_SCRATCH  # the task holds the release's noise key
    return run_on_ranks(_train_rank, task, node.ranks, device.type, threads, what, preload, scratch)


def _train_rank(
    ranks: ProcessGroupRanks, device: torch.device, task: RankTask
) -> tuple[TrainResult, Weights] | None:
    from flowerbed.client.local_round import global_model, kept_noise
    from flowerbed.model.adapter import shared_state

    if task.killed_rank == ranks.rank:
        os.kill(os.getpid(), signal.SIGKILL)
    model = global_model(task.spec, task.weights, task.base_model)
    key = task.noise

    def noise() -> NoiseKey:
        assert key is not None
        return key

    correlated = kept_noise(task.permit, *task.state, task.classes)
    trainer = make_trainer(
        model, task.train, task.privacy, device, task.permit, noise, ranks, correlated
    )
    if task.keep_inner_state:
        restore_inner_state(trainer.optimizer, trainer.model, *task.state)
    result = trainer.train(task.draws, task.schedule, np.random.default_rng(0))
    if ranks.rank != 0:
        return None
    if task.keep_inner_state:
        save_inner_state(trainer.optimizer, trainer.model, *task.state)
    if correlated is not None:  # every rank shaped the same noise; one saves it
        correlated.save(*task.state, task.permit.nonce or "")
    return result, {k: v.detach().cpu() for k, v in shared_state(trainer.model).items()}
