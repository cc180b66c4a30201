"""The GPU path: bf16 autocast training and bf16 transport. Skipped where no CUDA device is."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowerbed.client.schedule import Schedule
from flowerbed.client.trainer import LocalTrainer
from flowerbed.continual.pool import TrainingPool
from flowerbed.model import build_model, from_array_record, resolve_device, to_array_record
from tests.conftest import section

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_auto_device_picks_cuda_and_trains_under_bf16_autocast():
    device = resolve_device("auto")
    assert device.type == "cuda"
    model = build_model(section("model", "model=tiny"), 257, 256, 0)
    tokens = np.random.default_rng(0).integers(0, 257, size=(64, 64)).astype(np.uint16)
    trainer = LocalTrainer(model, section("train", "train.local_steps=5"), device)
    result = trainer.train(TrainingPool.over(tokens), Schedule(0, 5), np.random.default_rng(0))
    assert np.isfinite(result.loss)
    assert next(trainer.model.parameters()).dtype == torch.float32  # master weights stay fp32
    state = {k: v.to(torch.bfloat16) for k, v in trainer.model.state_dict().items()}
    back = from_array_record(to_array_record(state, "bf16"), "bf16")
    assert all(torch.equal(back[k], state[k].float().cpu()) for k in state)
