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


def _dp_lora_update(device: torch.device) -> torch.Tensor:
    """The adapters' change after one DP step with noise 0 (SGD at lr 1), the model moved
    to `device` after `get_peft_model`, as a client does."""
    from flowerbed.model.adapter import add_adapter
    from flowerbed.privacy.dp_sgd import PrivateStep

    lora = section("adapter", "adapter=lora", "adapter.rank=4", "adapter.dropout=0.0")
    model = add_adapter(build_model(section("model", "model=tiny"), 257, 256, 0), lora)
    model = model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = torch.cat([p.detach().reshape(-1) for p in trainable])
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    step = PrivateStep(
        model,
        torch.optim.SGD(trainable, lr=1.0),
        noise_multiplier=0.0,
        max_grad_norm=1e-3,
        expected_batch_size=4,
        mode="bookkeeping",
        max_physical_batch=0,
    )
    ids = torch.randint(0, 257, (4, 64), generator=torch.Generator().manual_seed(0))
    step.step(ids.to(device))
    step.close()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    return (before - torch.cat([p.detach().reshape(-1) for p in trainable])).cpu()


def test_dp_lora_moved_to_cuda_after_peft_updates_the_adapters_as_on_cpu():
    """Opacus issue #820: DP-LoRA's weights were silently wrong when the model was moved to
    the device after `get_peft_model`. With noise 0, the CUDA update is the CPU update
    (up to bf16 autocast)."""
    on_cpu, on_cuda = _dp_lora_update(torch.device("cpu")), _dp_lora_update(resolve_device("cuda"))
    assert float(on_cpu.norm()) > 0
    cosine = torch.nn.functional.cosine_similarity(on_cpu, on_cuda, dim=0)
    assert float(cosine) > 0.99
    assert float(on_cuda.norm()) == pytest.approx(float(on_cpu.norm()), rel=0.05)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_nccl_ranks_clip_and_noise_as_one_gpu_does():
    from flowerbed.client.rank_processes import run_on_ranks
    from flowerbed.config import compose_config
    from flowerbed.model.ranks import Ranks
    from flowerbed.server.instructions import model_spec
    from tests.test_ranks import _dp_gradients

    cfg = compose_config("model=tiny")
    model = build_model(cfg.model, 257, 0, 0)
    task = {
        "architecture": model_spec(cfg, model).architecture,
        "weights": model.state_dict(),
        "batch": torch.randint(0, 257, (12, 16), generator=torch.Generator().manual_seed(1)),
        "sigma": 1.0,
        "clip": 0.01,
    }
    one = _dp_gradients(Ranks(), torch.device("cuda", 0), task)
    two = run_on_ranks(_dp_gradients, task, 2, "cuda", 0, "the GPU test's DP step")
    for key, update in one.items():
        cosine = torch.nn.functional.cosine_similarity(update, two[key], dim=0)
        assert float(cosine) > 0.999, key
