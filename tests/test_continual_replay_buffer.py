"""The replay buffer through Avalanche's storage policies: size, balance, restarts.

These import Avalanche (about 20 s, once for the module).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from flowerbed.config.schema import ContinualConfig
from flowerbed.continual.replay import buffer_refs, update_buffer

SEED = [0, 1]


def config(policy: str, size: int = 30) -> ContinualConfig:
    return ContinualConfig(mode="replay", policy=policy, buffer_size=size)


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
        buffer = update_buffer(None, config("reservoir", 50), [100, 300], [seed, 0])
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


def client_job(tmp_path, mode: str, rewarm: bool = False, every: int = 2):
    import torch

    from flowerbed.client.job import ClientJob
    from flowerbed.config import TrainConfig
    from flowerbed.config.schema import PrivacyConfig

    return ClientJob(
        round=1,
        total_rounds=6,
        partition_id=0,
        seed=0,
        train=TrainConfig(local_steps=4, batch_size=8, warmup_steps=2),
        privacy=PrivacyConfig(),
        continual=ContinualConfig(
            mode=mode, buffer_size=20, replay_fraction=0.25, experiences=3, rewarm=rewarm
        ),
        experience_every=every,
        model_config={},
        transport_dtype="fp32",
        data_dir=tmp_path / "data",
        state_dir=tmp_path / "state",
        device=torch.device("cpu"),
        threads=0,
    )


def write_client_data(tmp_path, sizes=(100, 50, 80)) -> None:
    from flowerbed.continual.stream import experience_dir
    from flowerbed.data.blocks import Blocks
    from flowerbed.data.prepare import ClientShard

    for k, n in enumerate(sizes):
        blocks = Blocks(np.full((n, 4), k, np.uint16), np.zeros(n, np.int16), ["d"])
        ClientShard(blocks, blocks.subset(np.arange(2))).save(experience_dir(tmp_path / "data", k))


def test_a_replay_client_follows_the_schedule_and_keeps_its_buffer(tmp_path):
    from flowerbed.client.round_data import round_data

    write_client_data(tmp_path)
    job = client_job(tmp_path, "replay")
    seen = []
    for round_ in range(1, 7):
        job.round = round_
        data = round_data(job)
        replayed = len(data.pool.replay) if data.pool.replaying else 0
        seen.append((len(data.experiences), len(data.pool.new), replayed))
    assert seen == [(1, 100, 0), (1, 100, 0), (2, 50, 20), (2, 50, 20), (3, 80, 20), (3, 80, 20)]
    state = json.loads((tmp_path / "state/continual_state.json").read_text())
    assert state["arrival_rounds"] == [1, 3, 5] and state["buffer"]["absorbed"] == 2
    # the DP plan, 4 steps a round: 8/100; then the 6 new of 50 rows; then the 2 of 20 replayed
    assert data.planned == [(0.08, 4)] * 2 + [(0.12, 4)] * 2 + [(0.1, 4)] * 2


def test_naive_and_cumulative_train_on_the_newest_or_on_everything(tmp_path):
    from flowerbed.client.round_data import round_data

    write_client_data(tmp_path)
    for mode, expected in (("naive", 80), ("cumulative", 230)):
        job = client_job(tmp_path / mode, mode)
        write_client_data(tmp_path / mode)
        job.round = 5
        data = round_data(job)
        assert len(data.pool.new) == expected and not data.pool.replaying
        assert data.planned[-1] == (pytest.approx(8 / expected), 4)


def test_rewarming_restarts_the_schedule_at_each_experience(tmp_path):
    from flowerbed.client.round_data import round_data

    write_client_data(tmp_path)
    job = client_job(tmp_path, "naive", rewarm=True)
    spans = []
    for round_ in range(1, 7):
        job.round = round_
        data = round_data(job)
        spans.append((data.first_step, data.schedule_steps))
    assert spans == [(0, 8), (4, 8), (0, 8), (4, 8), (0, 8), (4, 8)]
    job.continual.rewarm = False
    assert (round_data(job).first_step, round_data(job).schedule_steps) == (20, 24)
