"""The client's local trainer and the federation-wide learning-rate schedule."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from flowerbed.client.schedule import Schedule, lr_at
from flowerbed.client.trainer import LocalTrainer
from flowerbed.continual.pool import TrainingPool
from flowerbed.data import byte_tokenizer
from flowerbed.data.blocks import Blocks
from flowerbed.data.packing import pack_domains
from flowerbed.data.synthetic import synthetic_domains
from flowerbed.model import build_model, mean_loss
from tests.conftest import section

TINY = section("model", "model=tiny")


def test_schedule_warms_up_then_decays_to_the_floor():
    cfg = section("train", "train.lr=1.0", "train.warmup_steps=4", "train.min_lr_ratio=0.1")
    lrs = [lr_at(s, cfg, total_steps=20) for s in range(21)]
    assert lrs[0] == pytest.approx(0.25) and lrs[3] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[3:]))
    assert lrs[20] == pytest.approx(0.1)


@pytest.fixture(scope="module")
def blocks() -> Blocks:
    return pack_domains(synthetic_domains(2, 40, 1.0), byte_tokenizer(), 32)


def run_trainer(blocks: Blocks, seed: int) -> tuple[LocalTrainer, float]:
    model = build_model(TINY, 257, 256, seed=0)
    cfg = section(
        "train",
        "train.local_steps=30",
        "train.batch_size=8",
        "train.lr=3e-3",
        "train.warmup_steps=2",
    )
    trainer = LocalTrainer(model, cfg, torch.device("cpu"))
    pool = TrainingPool.over(blocks.tokens)
    result = trainer.train(pool, Schedule(0, 30), np.random.default_rng(seed))
    return trainer, result.loss


def test_local_steps_lower_the_loss(blocks):
    before = mean_loss(build_model(TINY, 257, 256, 0), blocks, 8, 4, torch.device("cpu"))
    trainer, _ = run_trainer(blocks, seed=1)
    after = mean_loss(trainer.model, blocks, 8, 4, torch.device("cpu"))
    assert after < before - 0.5


def test_the_same_seed_gives_the_same_weights(blocks):
    a, loss_a = run_trainer(blocks, seed=5)
    b, loss_b = run_trainer(blocks, seed=5)
    assert loss_a == loss_b
    assert all(
        torch.equal(x, y)
        for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True)
    )
