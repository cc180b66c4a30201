"""The local trainers: K optimizer steps on a client's pool, knowing nothing of Flower.

Both trainers share one interface, `train(pool, schedule, rng) -> TrainResult`, and one
loss definition: the mean over the sequences trained of each sequence's next-token loss
(a plain batch's Hugging Face loss is that mean already, its sequences being of equal
length). `make_trainer` picks the trainer from the round's privacy permit.

The plain loop avoids host syncs (the loss is summed on the device) so that it runs as
fast as a plain PyTorch loop (see simulations/bench_client_step.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from flowerbed.client.schedule import Schedule
from flowerbed.config import PrivacyConfig, TrainConfig
from flowerbed.model.ranks import Ranks
from flowerbed.model.runtime import autocast, inputs_and_labels
from flowerbed.privacy.correlated_noise import CorrelatedNoise
from flowerbed.privacy.guard import RoundPermit
from flowerbed.privacy.secret_noise import NoiseKey


@dataclass
class TrainResult:
    loss: float
    """Mean over the sequences trained of each one's next-token loss."""
    tokens: int
    seconds: float
    steps: int


class Batches(Protocol):
    """Where a round's batches come from: the client's `TrainingPool`, or the batches its
    supervisor drew for the ranks (`client/ranked_round.py: RoundDraws`)."""

    padded: bool

    @property
    def seq_len(self) -> int: ...

    def fixed_batches(
        self, steps: int, batch_size: int, rng: np.random.Generator
    ) -> np.ndarray: ...

    def poisson_batch(
        self, batch_size: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray | None]: ...

    def expected_batch(self, batch_size: int) -> float: ...


class Trainer(Protocol):
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer

    def train(self, pool: Batches, schedule: Schedule, rng: np.random.Generator) -> TrainResult: ...


class LossMeter:
    """Sums per-sequence losses on the device; one host sync when the round ends."""

    def __init__(self, device: torch.device) -> None:
        self.total = torch.zeros((), device=device)
        self.sequences = 0

    def add(self, summed_loss: torch.Tensor, sequences: int) -> None:
        self.total += summed_loss.detach()
        self.sequences += sequences

    def across(self, ranks: Ranks) -> LossMeter:
        """This meter summed over the ranks (unchanged for one)."""
        if ranks.world > 1:
            sequences = torch.tensor(float(self.sequences), device=self.total.device)
            ranks.reduce_sum([self.total, sequences])
            self.sequences = int(sequences)
        return self

    def mean(self) -> float:
        return float(self.total) / max(self.sequences, 1)


def make_optimizer(
    model: torch.nn.Module, cfg: TrainConfig, device: torch.device, private: bool = False
) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms), fused on CUDA; under DP
    (`private`) with `train.dp_adam_bias_correction`, the noise-corrected one."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    if private and cfg.dp_adam_bias_correction:
        from flowerbed.privacy.dp_adam import NoiseCorrectedAdamW

        return NoiseCorrectedAdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=device.type == "cuda")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class LocalTrainer:
    """Plain training: fixed-size batches, the whole batch gradient clipped to `grad_clip`;
    on several ranks each takes a share of every batch and the gradients are summed."""

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: TrainConfig,
        device: torch.device,
        ranks: Ranks | None = None,
    ) -> None:
        self.model = model.to(device)
        self.cfg, self.device, self.ranks = cfg, device, ranks or Ranks()
        self.optimizer = make_optimizer(self.model, cfg, device)

    def train(self, pool: Batches, schedule: Schedule, rng: np.random.Generator) -> TrainResult:
        """Take `cfg.local_steps` steps from `schedule.first_step`."""
        steps, model, optimizer = self.cfg.local_steps, self.model, self.optimizer
        ranks = self.ranks
        params = [p for p in model.parameters() if p.requires_grad]
        batches = torch.from_numpy(pool.fixed_batches(steps, self.cfg.batch_size, rng))
        if self.device.type == "cuda":
            batches = batches.pin_memory()
        model.train()
        meter = LossMeter(self.device)
        start = time.perf_counter()
        for k in range(steps):
            set_lr(optimizer, schedule.lr(k, self.cfg))
            ids, _ = ranks.mine(batches[k].to(self.device, non_blocking=True))
            inputs, labels = inputs_and_labels(ids, pool.padded)
            with autocast(self.device):
                loss = model(input_ids=inputs, labels=labels).loss
            if ranks.world > 1:  # each rank's mean, weighted to sum to the batch's mean
                (loss * ranks.token_share(labels)).backward()
                ranks.reduce_sum([p.grad for p in params if p.grad is not None])
            else:
                loss.backward()
            if self.cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            meter.add(loss * ids.shape[0], ids.shape[0])
        seconds = time.perf_counter() - start
        return TrainResult(meter.across(ranks).mean(), batches.numel(), seconds, steps)


def make_trainer(
    model: torch.nn.Module,
    cfg: TrainConfig,
    privacy: PrivacyConfig,
    device: torch.device,
    permit: RoundPermit,
    noise: Callable[[], NoiseKey],
    ranks: Ranks | None = None,
    correlated: CorrelatedNoise | None = None,
) -> Trainer:
    """DP-SGD when the permit carries a noise multiplier, else plain training.

    `noise` is asked only for DP-SGD, before any batch is drawn; `correlated`: the kept
    buffers of `privacy.mechanism=banded`.
    """
    if permit.noise_multiplier is None:
        return LocalTrainer(model, cfg, device, ranks)
    from flowerbed.client.private_trainer import PrivateTrainer

    sigma = permit.noise_multiplier
    return PrivateTrainer(model, cfg, privacy, device, sigma, noise(), ranks, correlated)
