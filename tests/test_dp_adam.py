"""DP-AdamBC: AdamW's second moment without the DP noise's variance, and nothing else."""

from __future__ import annotations

import torch

from flowerbed.client.trainer import make_optimizer
from flowerbed.model import build_model
from flowerbed.privacy.dp_adam import FLOOR, NoiseCorrectedAdamW
from flowerbed.privacy.dp_sgd import PrivateStep
from tests.conftest import section
from tests.test_privacy_dp_sgd import TINY, flat


def test_without_noise_it_is_adamw_step_for_step_and_its_state_is_adamws():
    torch.manual_seed(0)
    start = torch.randn(6, 4)
    plain, corrected = start.clone().requires_grad_(), start.clone().requires_grad_()
    settings = {"lr": 0.01, "betas": (0.9, 0.95), "weight_decay": 0.1}
    ours = NoiseCorrectedAdamW([corrected], **settings)
    theirs = torch.optim.AdamW([plain], **settings)
    for _ in range(5):
        grad = torch.randn(6, 4)
        plain.grad, corrected.grad = grad.clone(), grad.clone()
        theirs.step()
        ours.step()
    assert torch.allclose(plain, corrected, atol=1e-6)
    theirs.load_state_dict(ours.state_dict())  # kept inner state moves between the two
    assert torch.equal(theirs.state[plain]["exp_avg_sq"], ours.state[corrected]["exp_avg_sq"])


def test_the_second_moment_loses_exactly_the_noise_variance_above_its_floor():
    """A coordinate with gradient 0.3 under noise of std 0.2 (v̂ = 0.09 + 0.04 after one
    step) is scaled by 1/√0.09; one without signal (v̂ = 0.04) by 1/√(FLOOR · 0.04)."""
    weight = torch.zeros(2, requires_grad=True)
    optimizer = NoiseCorrectedAdamW([weight], lr=1.0, betas=(0.0, 0.0), weight_decay=0.0, eps=0)
    optimizer.noise_std = 0.2
    weight.grad = torch.tensor([(0.09 + 0.04) ** 0.5, 0.2])
    optimizer.step()
    expected = -weight.grad / torch.tensor([0.09**0.5, (FLOOR * 0.04) ** 0.5])
    assert torch.allclose(weight.detach(), expected)


def test_the_trainer_names_the_noise_opacus_adds_to_the_mean_gradient():
    """φ = σC/B is the std of what a noise-only DP step puts on every coordinate."""
    model = build_model(TINY, 257, 256, seed=0)
    sigma, clip, batch = 2.0, 0.5, 4.0
    before = flat(model)
    step = PrivateStep(
        model,
        torch.optim.SGD(model.parameters(), lr=1.0),
        noise_multiplier=sigma,
        max_grad_norm=clip,
        expected_batch_size=batch,
        mode="bookkeeping",
        max_physical_batch=0,
    )
    step.step(torch.zeros((0, 16), dtype=torch.long))  # an empty draw: the noise alone
    step.close()
    measured = float((flat(model) - before).std())
    assert abs(measured / (sigma * clip / batch) - 1) < 0.02


def test_only_a_private_trainer_with_the_setting_gets_it():
    model = build_model(TINY, 257, 256, seed=0)
    train = section("train", "train.dp_adam_bias_correction=true")
    assert isinstance(
        make_optimizer(model, train, torch.device("cpu"), private=True), NoiseCorrectedAdamW
    )
    assert type(make_optimizer(model, train, torch.device("cpu"))) is torch.optim.AdamW
