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


def test_bookkeeping_clips_under_cuda_bf16_autocast_as_ghost_does():
    from flowerbed.privacy.dp_sgd import PrivateStep

    ids = torch.randint(0, 257, (4, 64), generator=torch.Generator().manual_seed(0)).cuda()
    updates = {}
    for mode in ("ghost", "bookkeeping"):
        model = build_model(section("model", "model=tiny"), 257, 256, 0).cuda()
        before = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        step = PrivateStep(
            model,
            torch.optim.SGD(model.parameters(), lr=1.0),
            noise_multiplier=0.0,
            max_grad_norm=0.05,
            expected_batch_size=4,
            mode=mode,
            max_physical_batch=2,
        )
        step.step(ids)  # PrivateStep's own bf16 autocast on CUDA
        step.close()
        updates[mode] = before - torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    cosine = torch.nn.functional.cosine_similarity(updates["ghost"], updates["bookkeeping"], dim=0)
    assert float(cosine) > 0.99
    assert float(updates["bookkeeping"].norm()) <= 0.05 * 1.01
