"""The local trainer: K AdamW steps on a client's blocks, framework-agnostic.

It knows nothing of Flower; `client.app` feeds it weights and sends back what it returns.
The step loop avoids host syncs (the loss is summed on the device) so that it runs as
fast as a plain PyTorch loop (see simulations/bench_client_step.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from flowerbed.client.schedule import lr_at
from flowerbed.config import TrainConfig
from flowerbed.continual.pool import TrainingPool
from flowerbed.model.runtime import autocast


@dataclass
class TrainResult:
    loss: float
    """Mean training loss over the local steps."""
    tokens: int
    seconds: float
    steps: int


def make_optimizer(
    model: torch.nn.Module, cfg: TrainConfig, device: torch.device
) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms), fused on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=device.type == "cuda")


class LocalTrainer:
    """Runs a client's local steps on one model with one optimizer."""

    def __init__(
        self, model: torch.nn.Module, cfg: TrainConfig, device: torch.device, total_steps: int
    ) -> None:
        self.model = model.to(device)
        self.cfg = cfg
        self.device = device
        self.total_steps = total_steps
        self.optimizer = make_optimizer(self.model, cfg, device)

    def train(self, pool: TrainingPool, first_step: int, rng: np.random.Generator) -> TrainResult:
        """Take `cfg.local_steps` steps starting at schedule step `first_step`."""
        steps, model, optimizer = self.cfg.local_steps, self.model, self.optimizer
        batches = torch.from_numpy(pool.fixed_batches(steps, self.cfg.batch_size, rng))
        if self.device.type == "cuda":
            batches = batches.pin_memory()
        model.train()
        loss_sum = torch.zeros((), device=self.device)
        start = time.perf_counter()
        for k in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(first_step + k, self.cfg, self.total_steps)
            ids = batches[k].to(self.device, non_blocking=True)
            with autocast(self.device):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            if self.cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach()
        mean = float(loss_sum) / steps  # the one host sync of the round
        seconds = time.perf_counter() - start
        return TrainResult(mean, steps * batches.shape[1] * batches.shape[2], seconds, steps)
