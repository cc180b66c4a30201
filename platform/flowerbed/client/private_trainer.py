"""The local trainer under DP-SGD: Poisson batches, per-sequence clipping, noise (Opacus).

Same interface as `LocalTrainer`; the noise multiplier comes from the client's privacy
guard, which records it with the pool's sample rate before the update leaves, and the
noise from the release's key (`privacy/secret_noise.py`).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from flowerbed.client.schedule import Schedule
from flowerbed.client.trainer import Batches, LossMeter, TrainResult, make_optimizer, set_lr
from flowerbed.config import PrivacyConfig, TrainConfig
from flowerbed.model.ranks import Ranks
from flowerbed.privacy.banded import noise_scale
from flowerbed.privacy.correlated_noise import CorrelatedNoise
from flowerbed.privacy.dp_adam import NoiseCorrectedAdamW
from flowerbed.privacy.dp_sgd import PrivateStep
from flowerbed.privacy.secret_noise import NoiseKey


class PrivateTrainer:
    """K DP-SGD steps; every step is one Poisson draw over the pool (new data and buffer),
    of sequences or, under unit-level DP, of documents or users; on several ranks each
    clips its share of the draw and the node's noise is drawn once."""

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: TrainConfig,
        privacy: PrivacyConfig,
        device: torch.device,
        noise_multiplier: float,
        noise: NoiseKey,
        ranks: Ranks | None = None,
        correlated: CorrelatedNoise | None = None,
    ) -> None:
        self.model = model.to(device)
        self.cfg, self.privacy, self.device = cfg, privacy, device
        self.ranks = ranks or Ranks()
        self.noise_multiplier, self.noise = noise_multiplier, noise
        self.correlated = correlated
        """privacy.mechanism=banded: the noise is correlated across steps (and rounds)."""
        self.optimizer = make_optimizer(self.model, cfg, device, private=True)

    def train(self, pool: Batches, schedule: Schedule, rng: np.random.Generator) -> TrainResult:
        expected_batch = pool.expected_batch(self.cfg.batch_size)
        if isinstance(self.optimizer, NoiseCorrectedAdamW):  # the noise on the mean gradient
            clip = self.privacy.max_grad_norm
            scale = noise_scale(self.correlated.coefficients) if self.correlated else 1.0
            self.optimizer.noise_std = scale * self.noise_multiplier * clip / expected_batch
        private = PrivateStep(
            self.model,
            self.optimizer,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.privacy.max_grad_norm,
            expected_batch_size=expected_batch,
            mode=self.privacy.grad_sample_mode,
            max_physical_batch=self.privacy.max_physical_batch,
            noise=self.noise,
            padded=pool.padded,
            ranks=self.ranks,
            correlated=self.correlated,
        )
        self.model.train()
        meter = LossMeter(self.device)
        start = time.perf_counter()
        try:
            for k in range(self.cfg.local_steps):
                set_lr(private.optimizer, schedule.lr(k, self.cfg))
                ids, groups = pool.poisson_batch(self.cfg.batch_size, rng)
                ids = torch.from_numpy(ids).to(self.device, non_blocking=True)
                units = None if groups is None else torch.from_numpy(groups).to(self.device)
                ids, units = self.ranks.mine(ids, units)
                meter.add(private.step(ids, units), len(ids))
        finally:
            private.close()
        meter.across(self.ranks)
        tokens = meter.sequences * pool.seq_len  # padding included
        return TrainResult(meter.mean(), tokens, time.perf_counter() - start, self.cfg.local_steps)
