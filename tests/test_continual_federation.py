"""Continual federations on Flower's Simulation Engine: replay against forgetting, with DP.

Three synthetic domains that share no words arrive one after another (two rounds each)
at two clients. Naive training forgets the old domains; 25% replay must keep most of it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flowerbed.config import FlowerbedConfig
from flowerbed.run.simulation import simulate
from tests.conftest import tiny_config
from tests.test_privacy_accounting import reference

pytestmark = pytest.mark.slow


def continual_config(cache_dir: Path, mode: str, **sections) -> FlowerbedConfig:
    """Three domains, two rounds each; `sections` override what they name."""
    base = {
        "data": {"synthetic_domains": 3, "synthetic_shift": 1.0},
        "federation": {"rounds": 6},
        "train": {"local_steps": 20},
        "continual": {"mode": mode, "experiences": 3, "replay_fraction": 0.25, "buffer_size": 64},
    }
    for key, values in sections.items():
        base[key] = {**base.get(key, {}), **values}
    return tiny_config(cache_dir, **base)


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def naive_and_replay(tmp_path_factory, cache_dir) -> dict[str, Path]:
    runs = {}
    for mode in ("naive", "replay"):
        runs[mode] = tmp_path_factory.mktemp("continual") / mode
        simulate(continual_config(cache_dir, mode), runs[mode])
    return runs


def test_replay_forgets_far_less_than_naive(naive_and_replay):
    naive = summary_of(naive_and_replay["naive"])["continual"]
    replay = summary_of(naive_and_replay["replay"])["continual"]
    assert naive["forgetting"] > 0.5  # there is something to forget
    assert replay["forgetting"] < 0.3 * naive["forgetting"]
    assert replay["average_loss"] < naive["average_loss"]
    assert replay["backward_transfer"] > naive["backward_transfer"]


def test_every_round_records_the_loss_matrix_and_the_run_draws_it(naive_and_replay):
    run_dir = naive_and_replay["replay"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["experience"] for r in rows] == [0, 0, 1, 1, 2, 2]
    assert [len(r["experience_loss"]) for r in rows] == [1, 1, 2, 2, 3, 3]
    matrix = np.array(summary_of(run_dir)["continual"]["loss_matrix"], dtype=float)
    assert matrix.shape == (3, 3) and np.isnan(matrix[np.triu_indices(3, 1)]).all()
    assert not np.isnan(matrix[np.tril_indices(3)]).any()
    assert (run_dir / "loss_matrix.png").stat().st_size > 0


def test_clients_keep_their_buffer_as_references_into_their_own_data(naive_and_replay):
    state = json.loads(
        (naive_and_replay["replay"] / "clients/client-0/state/continual_state.json").read_text()
    )
    assert state["experiences"] == ["exp-000", "exp-001", "exp-002"]
    assert state["arrival_rounds"] == [1, 3, 5]
    refs = np.array([r for g in state["buffer"]["groups"] for r in g["refs"]])
    assert len(refs) == 64 and set(refs[:, 0]) == {0, 1}  # the past, not the newest
    assert not (naive_and_replay["naive"] / "clients/client-0/state/privacy_ledger.json").exists()


def test_dp_with_replay_counts_every_step_over_new_data_and_buffer(tmp_path, cache_dir):
    cfg = continual_config(
        cache_dir,
        "replay",
        privacy={"mode": "dp_sgd", "target_epsilon": 8.0},
        federation={"rounds": 4},
        train={"local_steps": 8},
        continual={"experiences": 2, "buffer_size": 8},
        node_policy={"release": "exact"},  # forgetting needs the clients' held-out losses
    )
    simulate(cfg, tmp_path / "run")
    summary = summary_of(tmp_path / "run")
    assert summary["continual"]["forgetting"] is not None
    assert summary["outside_guarantee_clients"] == [0, 1]
    for client in (0, 1):
        ledger = json.loads(
            (tmp_path / f"run/clients/client-{client}/state/privacy_ledger.json").read_text()
        )
        entries = ledger["entries"]
        assert [e["round"] for e in entries] == [1, 2, 3, 4]
        assert all(e["steps"] == 8 for e in entries)
        # after experience 1 arrives, the buffer (8 records, 2 of 8 rows each step) sets q
        assert [e["sample_rate"] for e in entries[2:]] == [pytest.approx(0.25)] * 2
        history = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in entries]
        # the lifetime epsilon of every step, by Google's dp-accounting (PLD), not our code
        assert entries[-1]["epsilon"] == pytest.approx(reference(history, 1e-5, "pld"), rel=0.01)
        assert entries[-1]["epsilon"] <= 8.0
