"""The local trainer under DP-SGD: Poisson batches, per-sequence clipping, noise (Opacus).

Same contract as `LocalTrainer`; the noise multiplier and sample rate come from the
client's privacy ledger, which records them once the round is done.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from flowerbed.client.schedule import lr_at
from flowerbed.client.trainer import TrainResult, make_optimizer
from flowerbed.config import TrainConfig
from flowerbed.config.schema import PrivacyConfig
from flowerbed.data.blocks import Blocks
from flowerbed.privacy.dp_sgd import PrivateStep, poisson_sample


class PrivateTrainer:
    """K DP-SGD steps; every step is one Poisson draw at `sample_rate` over the blocks."""

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: TrainConfig,
        privacy: PrivacyConfig,
        device: torch.device,
        total_steps: int,
        noise_multiplier: float,
        sample_rate: float,
        num_records: int,
        noise_seed: int,
    ) -> None:
        self.model = model.to(device)
        self.cfg, self.device, self.total_steps = cfg, device, total_steps
        self.sample_rate = sample_rate
        self.optimizer = make_optimizer(self.model, cfg, device)
        generator = torch.Generator(device=device)
        generator.manual_seed(noise_seed)
        self.private = PrivateStep(
            self.model,
            self.optimizer,
            noise_multiplier=noise_multiplier,
            max_grad_norm=privacy.max_grad_norm,
            expected_batch_size=sample_rate * num_records,
            mode=privacy.grad_sample_mode,
            max_physical_batch=privacy.max_physical_batch,
            generator=generator,
        )

    def train(self, blocks: Blocks, first_step: int, rng: np.random.Generator) -> TrainResult:
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        sequences = 0
        start = time.perf_counter()
        try:
            for k in range(self.cfg.local_steps):
                for group in self.private.optimizer.param_groups:
                    group["lr"] = lr_at(first_step + k, self.cfg, self.total_steps)
                index = poisson_sample(len(blocks), self.sample_rate, rng)
                ids = torch.from_numpy(np.asarray(blocks.tokens[index]).astype(np.int64))
                loss_sum += self.private.step(ids.to(self.device, non_blocking=True))
                sequences += len(index)
        finally:
            self.private.close()
        mean = float(loss_sum) / max(sequences, 1)
        return TrainResult(
            mean, sequences * blocks.seq_len, time.perf_counter() - start, self.cfg.local_steps
        )
