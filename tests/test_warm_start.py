"""The synchronous warm start (`train.sync_rounds`): its rounds take one local step on the
run's one schedule, the server averages them without its outer step, and under DP-SGD
the ledger and the target's calibration count the steps each round really took."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flowerbed.config import compose_config
from flowerbed.model.inner_state import FOLDER
from flowerbed.privacy.ledger import FILENAME, PrivacyLedger
from flowerbed.run.simulation import simulate
from flowerbed.server.outer import outer_optimizer
from flowerbed.server.pipeline import AggregationPipeline
from tests.conftest import section, tiny_config

DILOCO = {"name": "diloco", "outer_lr": 0.7, "outer_momentum": 0.9, "keep_inner_state": True}


def test_warm_start_rounds_take_one_step_on_the_runs_one_schedule():
    plain = section("train", "train.local_steps=5")
    warm = section("train", "train.local_steps=5", "train.sync_rounds=3")
    assert [plain.steps_before(r) for r in (1, 2, 4)] == [0, 5, 15]
    assert [warm.steps_in(r) for r in (1, 3, 4, 9)] == [1, 1, 5, 5]
    assert [warm.steps_before(r) for r in (1, 2, 4, 5, 11)] == [0, 1, 3, 8, 38]
    assert warm.in_round(2).local_steps == 1 and warm.in_round(4).local_steps == 5
    by_sequences = section(
        "train", "train.sequences_per_round=40", "train.batch_size=8", "train.sync_rounds=1"
    )
    assert by_sequences.local_steps == 5 and by_sequences.in_round(1).local_steps == 1


def test_warm_start_rounds_average_without_the_outer_step():
    cfg = compose_config("strategy=diloco", "strategy.outer_lr=0.7", "train.sync_rounds=2")
    pipeline = AggregationPipeline(cfg, outer_optimizer(cfg.strategy))
    current, combined = {"w": torch.tensor([1.0])}, {"w": torch.tensor([0.8])}
    for round_ in (1, 2):
        assert pipeline.outer_step(round_, current, combined) is combined
    assert pipeline.outer.steps == 0 and pipeline.outer.state == {}
    moved = pipeline.outer_step(3, current, combined)["w"].item()
    assert moved == pytest.approx(1.0 - 0.7 * (0.2 + 0.9 * 0.2))
    assert pipeline.outer.steps == 1


def _run(tmp_path: Path, cache_dir: Path, name: str, **sections: dict) -> Path:
    cfg = tiny_config(cache_dir, **sections)
    run_dir = tmp_path / name
    simulate(cfg, run_dir)
    return run_dir


@pytest.mark.slow
def test_a_warm_started_dp_federation_counts_each_rounds_steps(tmp_path, cache_dir):
    """DiLoCo under DP-SGD with 2 warm-start rounds of 3: 1 + 1 + 6 steps per client."""
    privacy = {"mode": "dp_sgd", "target_epsilon": 8.0, "delta": 1e-5}
    run_dir = _run(
        tmp_path,
        cache_dir,
        "warm",
        strategy=DILOCO,
        train={"sync_rounds": 2, "batch_size": 16},
        privacy=privacy,
    )
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["tokens"] for r in records] == [2 * 16 * 32, 2 * 16 * 32, 2 * 6 * 16 * 32]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert 7.0 < summary["epsilon_max"] <= 8.0  # the target spent over 8 steps, not 18
    for client in range(2):
        state = run_dir / "clients" / f"client-{client}" / "state"
        ledger = PrivacyLedger.open(state / FILENAME, 1e-5, "prv")
        assert [e.steps for e in ledger.entries] == [1, 1, 6]
        moments = load_file(state / FOLDER / "round-00003.safetensors")
        assert {float(v) for k, v in moments.items() if k.startswith("step/")} == {8.0}


@pytest.mark.slow
def test_a_fully_synchronous_diloco_run_is_fedavg(tmp_path, cache_dir):
    """Every round a warm-start round: DiLoCo's outer step never runs, so its weights are
    FedAvg's (with the same kept AdamW) exactly."""
    train = {"sync_rounds": 3}
    diloco = _run(tmp_path, cache_dir, "diloco", strategy=DILOCO, train=train)
    fedavg = _run(
        tmp_path,
        cache_dir,
        "fedavg",
        strategy={"name": "fedavg", "keep_inner_state": True},
        train=train,
    )
    ours = load_file(diloco / "final_model" / "model.safetensors")
    theirs = load_file(fedavg / "final_model" / "model.safetensors")
    for name, tensor in theirs.items():
        assert torch.equal(ours[name], tensor), name
