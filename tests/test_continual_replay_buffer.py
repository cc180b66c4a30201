"""The replay buffer through Avalanche's storage policies: size, balance, restarts.

These import Avalanche (about 20 s, once for the module).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from flowerbed.client.randomness import RunReservoir
from flowerbed.config import ContinualConfig, compose_config
from flowerbed.config.node_policy import accepting_all
from flowerbed.continual.replay import buffer_refs, update_buffer
from flowerbed.protocol import ModelSpec
from tests.conftest import section

SEED = RunReservoir([0, 1])


def config(policy: str, size: int = 30) -> ContinualConfig:
    return section(
        "continual",
        "continual=replay",
        f"continual.policy={policy}",
        f"continual.buffer_size={size}",
    )


def per_experience(buffer: dict) -> list[int]:
    return np.bincount(buffer_refs(buffer)[:, 0]).tolist()


@pytest.mark.parametrize("policy", ["reservoir", "experience_balanced"])
def test_buffer_keeps_at_most_its_size_of_valid_references(policy):
    sizes = [100, 80, 120]
    buffer = update_buffer(None, config(policy), sizes, SEED)
    refs = buffer_refs(buffer)
    assert len(refs) == 30 and len({tuple(r) for r in refs}) == 30
    assert all(0 <= row < sizes[exp] for exp, row in refs)
    assert buffer["absorbed"] == 3


def test_small_experiences_fill_the_buffer_only_as_far_as_they_go():
    buffer = update_buffer(None, config("reservoir", 256), [12], SEED)
    assert per_experience(buffer) == [12]


def test_experience_balanced_splits_the_buffer_evenly():
    buffer = update_buffer(None, config("experience_balanced"), [100, 500, 60], SEED)
    assert per_experience(buffer) == [10, 10, 10]


def test_reservoir_keeps_a_uniform_sample_of_everything_seen():
    counts = np.zeros(2)
    for seed in range(20):
        buffer = update_buffer(None, config("reservoir", 50), [100, 300], RunReservoir([seed, 0]))
        counts += per_experience(buffer)
    assert counts[1] / counts.sum() == pytest.approx(0.75, abs=0.05)


@pytest.mark.parametrize("policy", ["reservoir", "experience_balanced"])
def test_a_stored_buffer_continues_as_if_the_client_had_never_stopped(policy):
    cfg = config(policy)
    first = update_buffer(None, cfg, [100, 80], SEED)
    restarted = json.loads(json.dumps(first))  # what a fresh process reads from disk
    assert update_buffer(restarted, cfg, [100, 80], SEED) is restarted  # nothing to add
    continued = update_buffer(restarted, cfg, [100, 80, 120], SEED)
    from_scratch = update_buffer(None, cfg, [100, 80, 120], SEED)
    assert buffer_refs(continued).tolist() == buffer_refs(from_scratch).tolist()


def test_a_buffer_from_other_settings_or_ahead_of_the_data_is_rebuilt():
    stored = update_buffer(None, config("reservoir"), [100, 80, 120], SEED)
    behind = update_buffer(stored, config("reservoir"), [100, 80], SEED)  # a resumed run
    assert buffer_refs(behind)[:, 0].max() == 1 and behind["absorbed"] == 2
    resized = update_buffer(stored, config("reservoir", 10), [100, 80, 120], SEED)
    assert len(buffer_refs(resized)) == 10


# --- a client's round, from its folders and its state --------------------------------


def client_job(mode: str, rewarm: bool = False, every: int = 2):
    from flowerbed.protocol import TrainInstructions

    cfg = compose_config(
        "train.local_steps=4",
        "train.batch_size=8",
        "train.warmup_steps=2",
        "privacy=off",
        f"continual={mode}",
        "continual.buffer_size=20",
        "continual.replay_fraction=0.25",
        "continual.experiences=3",
        f"continual.rewarm={str(rewarm).lower()}",
    )
    return TrainInstructions(
        round=1,
        total_rounds=6,
        seed=0,
        model=ModelSpec("{}", cfg.adapter),
        transport_dtype="fp32",
        arrival_every=every,
        uniform_weights=False,
        keep_inner_state=False,
        evaluate_incoming=False,
        train=cfg.train,
        privacy=cfg.privacy,
        continual=cfg.continual,
    )


def node(tmp_path):
    from flowerbed.client.node import Node

    return Node(0, tmp_path / "data", tmp_path / "state", "cpu", 0, accepting_all(), False)


def write_client_data(tmp_path, sizes=(100, 50, 80)) -> None:
    from flowerbed.continual.stream import experience_dir
    from flowerbed.data.blocks import Blocks
    from flowerbed.data.prepare import ClientShard

    for k, n in enumerate(sizes):
        blocks = Blocks(np.full((n, 4), k, np.uint16), np.zeros(n, np.int16), ["d"])
        ClientShard(blocks, blocks.subset(np.arange(2))).save(experience_dir(tmp_path / "data", k))


def test_a_replay_client_follows_the_schedule_and_keeps_its_buffer(tmp_path):
    from flowerbed.client.round_plan import plan_round

    write_client_data(tmp_path)
    job = client_job("replay")
    seen = []
    for round_ in range(1, 7):
        plan = plan_round(dataclasses.replace(job, round=round_), node(tmp_path))
        replayed = len(plan.pool.replay) if plan.pool.replaying else 0
        seen.append((len(plan.experiences), len(plan.pool.new), replayed))
    assert seen == [(1, 100, 0), (1, 100, 0), (2, 50, 20), (2, 50, 20), (3, 80, 20), (3, 80, 20)]
    state = json.loads((tmp_path / "state/continual_state.json").read_text())
    assert state["arrival_rounds"] == [1, 3, 5] and state["buffer"]["absorbed"] == 2
    # the DP plan, 4 steps a round: 8/100; then the 6 new of 50 rows; then the 2 of 20 replayed
    assert plan.planned == [(0.08, 4)] * 2 + [(0.12, 4)] * 2 + [(0.1, 4)] * 2


def test_naive_and_cumulative_train_on_the_newest_or_on_everything(tmp_path):
    from flowerbed.client.round_plan import plan_round

    for mode, expected in (("naive", 80), ("cumulative", 230)):
        write_client_data(tmp_path / mode)
        plan = plan_round(dataclasses.replace(client_job(mode), round=5), node(tmp_path / mode))
        assert len(plan.pool.new) == expected and not plan.pool.replaying
        assert plan.planned[-1] == (pytest.approx(8 / expected), 4)


def test_rewarming_restarts_the_schedule_at_each_experience(tmp_path):
    from flowerbed.client.round_plan import plan_round

    write_client_data(tmp_path)
    job = client_job("naive", rewarm=True)
    spans = []
    for round_ in range(1, 7):
        schedule = plan_round(dataclasses.replace(job, round=round_), node(tmp_path)).schedule
        spans.append((schedule.first_step, schedule.total_steps))
    assert spans == [(0, 8), (4, 8), (0, 8), (4, 8), (0, 8), (4, 8)]
    no_rewarm = client_job("naive", rewarm=False)
    schedule = plan_round(dataclasses.replace(no_rewarm, round=6), node(tmp_path)).schedule
    assert (schedule.first_step, schedule.total_steps) == (20, 24)
