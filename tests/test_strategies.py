"""Outer optimizers (FedAvg, FedAvgM, DiLoCo, FedAdam) by hand, and in real federations:
DiLoCo learns and reads back its inner AdamW state; every strategy resumes exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flowerbed.model.inner_state import FOLDER
from flowerbed.run.simulation import continue_simulation, simulate
from flowerbed.server.checkpoint import load_checkpoint, snapshot, write_checkpoint
from flowerbed.server.outer import outer_optimizer
from tests.conftest import section, tiny_config

STRATEGIES = ["fedavgm", "diloco", "fedadam"]


def strategy(name: str, *overrides: str):
    return section("strategy", f"strategy={name}", *overrides)


def two_rounds(name: str, *overrides: str) -> list[dict[str, torch.Tensor]]:
    """Global weights after two outer steps from fixed client averages."""
    outer = outer_optimizer(strategy(name, *overrides))
    torch.manual_seed(0)
    x = {"w": torch.randn(4, 3), "b": torch.randn(3)}
    steps = []
    for _ in range(2):
        average = {k: v + 0.1 * torch.randn_like(v) for k, v in x.items()}
        x = outer.step(x, average)
        steps.append((average, x))
    return steps


def test_diloco_with_outer_lr_1_and_no_momentum_is_fedavg_bit_for_bit():
    for average, new in two_rounds(
        "diloco", "strategy.outer_lr=1.0", "strategy.outer_momentum=0.0"
    ):
        for name in average:
            assert torch.equal(new[name], average[name])


def test_one_nesterov_and_one_heavy_ball_step_by_hand():
    cfg = strategy("diloco", "strategy.outer_lr=0.5", "strategy.outer_momentum=0.9")
    outer = outer_optimizer(cfg)
    x = {"w": torch.tensor([1.0])}
    x = outer.step(x, {"w": torch.tensor([0.8])})  # g = 0.2, buffer = 0.2
    assert x["w"].item() == pytest.approx(1.0 - 0.5 * (0.2 + 0.9 * 0.2))
    x1 = x["w"].item()
    x = outer.step(x, {"w": torch.tensor([x1 - 0.1])})  # g = 0.1, buffer = 0.9*0.2 + 0.1
    assert x["w"].item() == pytest.approx(x1 - 0.5 * (0.1 + 0.9 * 0.28), rel=1e-6)
    heavy = outer_optimizer(strategy("fedavgm", "strategy.outer_lr=0.5"))
    y = heavy.step({"w": torch.tensor([1.0])}, {"w": torch.tensor([0.8])})
    y = heavy.step(y, {"w": y["w"] - 0.1})
    assert y["w"].item() == pytest.approx(1.0 - 0.5 * 0.2 - 0.5 * 0.28, rel=1e-6)


def test_fedadam_by_hand():
    cfg = strategy("fedadam", "strategy.outer_lr=0.01", "strategy.outer_tau=0.001")
    outer = outer_optimizer(cfg)
    x, m, v = 1.0, 0.0, 0.0
    state = {"w": torch.tensor([x])}
    for t, delta in enumerate([-0.2, 0.05], start=1):
        state = outer.step(state, {"w": state["w"] + delta})
        m = 0.9 * m + 0.1 * delta
        v = 0.99 * v + 0.01 * delta**2
        x += 0.01 * (1 - 0.99**t) ** 0.5 / (1 - 0.9**t) * m / (v**0.5 + 0.001)
        assert state["w"].item() == pytest.approx(x, rel=1e-6)


@pytest.mark.parametrize("name", STRATEGIES)
def test_the_outer_state_survives_a_checkpoint(name: str, tmp_path: Path):
    model = torch.nn.Linear(3, 2)
    outer = outer_optimizer(strategy(name))
    x = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(2):
        x = outer.step(x, {k: v - 0.05 for k, v in x.items()})
    model.load_state_dict(x)
    saved = write_checkpoint(tmp_path, 2, *snapshot(model, outer), keep=2)
    restored = outer_optimizer(strategy(name))
    load_checkpoint(saved, torch.nn.Linear(3, 2), restored)
    average = {k: v + 0.03 for k, v in x.items()}
    expected, got = outer.step(x, average), restored.step(x, average)
    assert restored.steps == outer.steps == 3
    for k in expected:
        assert torch.equal(expected[k], got[k])


@pytest.fixture(scope="module", params=STRATEGIES)
def strategy_run(request, tmp_path_factory, cache_dir):
    cfg = tiny_config(cache_dir, strategy=strategy(request.param).__dict__)
    run_dir = tmp_path_factory.mktemp(request.param) / "run"
    return request.param, cfg, run_dir, simulate(cfg, run_dir)


@pytest.mark.slow
def test_every_strategy_learns_and_an_interrupted_run_resumes_to_the_same_weights(
    strategy_run, tmp_path
):
    _, cfg, complete, summary = strategy_run
    assert summary["final_val_loss"] < summary["initial_val_loss"] - 0.5
    crashed = tmp_path / "crashed"
    shutil.copytree(complete, crashed)
    shutil.rmtree(crashed / "checkpoints" / "round-00003")
    shutil.rmtree(crashed / "final_model")
    (crashed / "summary.json").unlink()
    continue_simulation(cfg, crashed)
    resumed = load_file(crashed / "final_model" / "model.safetensors")
    original = load_file(complete / "final_model" / "model.safetensors")
    for name, tensor in original.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("strategy_run", ["diloco"], indirect=True)
def test_diloco_clients_keep_their_adamw_moments_between_rounds(strategy_run):
    _, cfg, run_dir, _ = strategy_run
    steps = cfg.train.local_steps
    for client in range(cfg.federation.num_clients):
        folder = run_dir / "clients" / f"client-{client}" / "state" / FOLDER
        assert sorted(p.name for p in folder.iterdir()) == [
            "round-00002.safetensors",
            "round-00003.safetensors",
        ]
        moments = load_file(folder / "round-00003.safetensors")
        # AdamW's step count runs on across rounds: round 3 started from round 2's moments.
        assert {float(v) for k, v in moments.items() if k.startswith("step/")} == {3 * steps}
        assert any(k.startswith("exp_avg_sq/") for k in moments)
    assert json.loads((run_dir / "summary.json").read_text())["rounds"] == 3
