"""The local trainer under DP-SGD: Poisson batches, per-sequence clipping, noise (Opacus).

Same contract as `LocalTrainer`; the noise multiplier comes from the client's privacy
ledger, which records it with the pool's sample rate once the round is done.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from flowerbed.client.schedule import lr_at
from flowerbed.client.trainer import TrainResult, make_optimizer
from flowerbed.config import TrainConfig
from flowerbed.config.schema import PrivacyConfig
from flowerbed.continual.pool import TrainingPool
from flowerbed.privacy.dp_sgd import PrivateStep


class PrivateTrainer:
    """K DP-SGD steps; every step is one Poisson draw over the pool (new data and buffer)."""

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: TrainConfig,
        privacy: PrivacyConfig,
        device: torch.device,
        total_steps: int,
        noise_multiplier: float,
        pool: TrainingPool,
        noise_seed: int,
    ) -> None:
        self.model = model.to(device)
        self.cfg, self.device, self.total_steps = cfg, device, total_steps
        self.pool = pool
        self.optimizer = make_optimizer(self.model, cfg, device)
        generator = torch.Generator(device=device)
        generator.manual_seed(noise_seed)
        self.private = PrivateStep(
            self.model,
            self.optimizer,
            noise_multiplier=noise_multiplier,
            max_grad_norm=privacy.max_grad_norm,
            expected_batch_size=pool.expected_batch(cfg.batch_size),
            mode=privacy.grad_sample_mode,
            max_physical_batch=privacy.max_physical_batch,
            generator=generator,
        )

    def train(self, first_step: int, rng: np.random.Generator) -> TrainResult:
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        sequences = 0
        start = time.perf_counter()
        try:
            for k in range(self.cfg.local_steps):
                for group in self.private.optimizer.param_groups:
                    group["lr"] = lr_at(first_step + k, self.cfg, self.total_steps)
                ids = torch.from_numpy(self.pool.poisson_batch(self.cfg.batch_size, rng))
                loss_sum += self.private.step(ids.to(self.device, non_blocking=True))
                sequences += len(ids)
        finally:
            self.private.close()
        mean = float(loss_sum) / max(sequences, 1)
        tokens = sequences * self.pool.new.seq_len
        return TrainResult(mean, tokens, time.perf_counter() - start, self.cfg.local_steps)
