"""Continual learning pieces: arrival, client state, the round's pool, buffers, metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flowerbed.config import ConfigError, compose_config
from flowerbed.continual.matrix import continual_metrics, loss_matrix, merge_client_losses
from flowerbed.continual.pool import TrainingPool
from flowerbed.continual.rows import TokenRows
from flowerbed.continual.state import ContinualState, ContinualStateError
from flowerbed.continual.stream import arrived, experience_dir, scan_experiences
from flowerbed.data import DataError
from flowerbed.data.blocks import Blocks
from flowerbed.data.prepare import ClientShard, experience_groups, make_client_shards
from tests.conftest import section


def blocks_of(n: int, seq_len: int = 4, value: int = 0, domains: int = 1) -> Blocks:
    tokens = np.full((n, seq_len), value, dtype=np.uint16)
    tokens[:, 0] = np.arange(n)  # each row is recognisable
    return Blocks(tokens, np.arange(n) % domains, [f"d{d}" for d in range(domains)])


def write_experience(data_dir: Path, index: int, n: int) -> None:
    ClientShard(blocks_of(n, value=index + 1), blocks_of(2, value=index + 1)).save(
        experience_dir(data_dir, index)
    )


# --- arrival -------------------------------------------------------------------------


def test_the_schedule_releases_one_experience_every_interval(tmp_path: Path):
    for k in range(3):
        write_experience(tmp_path, k, 5)
    experiences = scan_experiences(tmp_path)
    counts = [len(arrived(experiences, r, every=2)) for r in range(1, 9)]
    assert counts == [1, 1, 2, 2, 3, 3, 3, 3]
    assert len(arrived(experiences, 1, every=0)) == 3


def test_a_new_folder_is_picked_up_once_complete(tmp_path: Path):
    write_experience(tmp_path, 0, 5)
    assert [e.name for e in scan_experiences(tmp_path)] == ["exp-000"]
    blocks_of(5).save(experience_dir(tmp_path, 1), "train")  # still being copied
    assert len(scan_experiences(tmp_path)) == 1
    blocks_of(2).save(experience_dir(tmp_path, 1), "heldout")
    assert [e.name for e in scan_experiences(tmp_path)] == ["exp-000", "exp-001"]


def test_a_plain_shard_is_one_experience_and_an_empty_folder_is_an_error(tmp_path: Path):
    ClientShard(blocks_of(5), blocks_of(2)).save(tmp_path / "data")
    assert len(scan_experiences(tmp_path / "data")) == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no prepared data"):
        scan_experiences(tmp_path / "empty")


def test_state_remembers_arrivals_and_refuses_reordered_folders(tmp_path: Path):
    path = tmp_path / "continual_state.json"
    state = ContinualState()
    assert state.note_arrivals(["exp-000"], 1) == ["exp-000"]
    assert state.note_arrivals(["exp-000", "exp-001"], 4) == ["exp-001"]
    state.save(path)
    again = ContinualState.load(path)
    assert again.arrival_rounds == [1, 4] and again.note_arrivals(["exp-000", "exp-001"], 5) == []
    with pytest.raises(ContinualStateError, match="must sort after"):
        again.note_arrivals(["exp-000", "a-new-one", "exp-001"], 6)
    again.note_arrivals(["exp-000"], 2)  # a resumed run went back before exp-001 arrived
    assert again.experiences == ["exp-000"] and again.arrival_rounds == [1]
    path.write_text("{not json")
    with pytest.raises(ContinualStateError, match="restore it from a backup"):
        ContinualState.load(path)


# --- the round's pool ----------------------------------------------------------------


def replay_pool(fraction: float = 0.25) -> TrainingPool:
    arrays = [blocks_of(40, value=1).tokens, blocks_of(60, value=2).tokens]
    buffer = np.stack([np.zeros(10, int), np.arange(10)], 1)  # 10 records of experience 0
    return TrainingPool(TokenRows.whole(arrays, [1]), TokenRows(arrays, buffer), fraction)


def test_fixed_batches_replay_exactly_the_configured_share():
    pool = replay_pool(0.05)
    batches = pool.fixed_batches(10, 8, np.random.default_rng(0))
    assert batches.shape == (10, 8, 4)
    replayed = batches[:, :, 1] == 1  # experience 0's rows carry value 1
    assert replayed.sum() == 4  # 5% of 80 slots, though 5% of 8 rows rounds to 0
    assert set(batches[replayed][:, 0]) <= set(range(10))  # only buffered rows


def test_poisson_draws_mix_new_and_replayed_records_at_their_rates():
    pool = replay_pool(0.25)
    q_new, q_replay = pool.poisson_rates(8)
    assert q_new == pytest.approx(6 / 60) and q_replay == pytest.approx(2 / 10)
    assert pool.accounting_rate(8) == q_replay and pool.expected_batch(8) == pytest.approx(8)
    rng = np.random.default_rng(0)
    draws = [pool.poisson_batch(8, rng)[0] for _ in range(2000)]
    assert np.mean([len(d) for d in draws]) == pytest.approx(8, rel=0.03)
    assert np.mean([(d[:, 1] == 1).sum() for d in draws]) == pytest.approx(2, rel=0.05)


def test_a_pool_without_buffer_samples_the_new_data_only():
    pool = TrainingPool.over(blocks_of(30).tokens)
    assert pool.poisson_rates(6) == (0.2, 0.0) and pool.num_records == 30
    assert pool.fixed_batches(3, 6, np.random.default_rng(0)).shape == (3, 6, 4)


# --- data ------------------------------------------------------------------------------


def test_experiences_by_domain_group_and_by_slice():
    blocks = blocks_of(20, domains=4)
    index = np.arange(20)
    by_domain = experience_groups(blocks, index, 2, "domain")
    assert [set(blocks.domains[g]) for g in by_domain] == [{0, 1}, {2, 3}]
    by_slice = experience_groups(blocks, index, 3, "slice")
    assert [len(g) for g in by_slice] == [7, 7, 6] and list(by_slice[0]) == list(range(7))


def test_more_experiences_than_domains_is_a_clear_error():
    cfg = section("data", "data=synthetic")
    with pytest.raises(DataError, match=r"continual\.experiences=5 by domain"):
        make_client_shards(blocks_of(40, domains=4), cfg, 2, np.random.default_rng(0), 5)


# --- config ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["continual=replay", "continual.replay_fraction=1.5"], "replay_fraction"),
        (["continual=replay", "continual.buffer_size=0"], "buffer_size"),
        (
            ["continual=naive", "continual.experiences=3", "continual.arrival_every=2"],
            "experience 3 would arrive in round 5",
        ),
        (["continual=naive", "federation.fraction_evaluate=0"], "fraction_evaluate"),
    ],
)
def test_continual_settings_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        compose_config("federation.rounds=4", *overrides)


def test_the_arrival_interval_spreads_experiences_over_the_rounds():
    naive = section("continual", "continual=naive", "continual.experiences=3")
    assert naive.arrival_interval(9) == 3
    every = section("continual", "continual=naive", "continual.arrival_every=1")
    assert every.arrival_interval(9) == 1
    assert section("continual", "continual=off").arrival_interval(9) == 0  # every folder
    with pytest.raises(ConfigError, match=r"continual\.experiences must be >= 1"):
        compose_config("continual=naive", "continual.experiences=0")


# --- metrics ---------------------------------------------------------------------------


def test_loss_matrix_forgetting_and_backward_transfer_on_a_hand_made_matrix():
    rounds = [
        (0, {"0": 3.0}),
        (0, {"0": 2.0}),  # the row of experience 0
        (1, {"0": 2.5, "1": 1.5}),
        (2, {"0": 3.0, "1": 2.5, "2": 1.0}),
    ]
    matrix = loss_matrix(rounds)
    assert np.isnan(matrix[0, 1]) and np.isnan(matrix[1, 2])
    assert matrix[1, :2].tolist() == [2.5, 1.5]
    metrics = continual_metrics(matrix)
    # old experiences 0 and 1: rises above their best (2.0 and 1.5) are 1.0 and 1.0
    assert metrics.forgetting == pytest.approx(1.0)
    # BWT: (R00 - R20 + R11 - R21) / 2 = (2.0 - 3.0 + 1.5 - 2.5) / 2
    assert metrics.backward_transfer == pytest.approx(-1.0)
    assert metrics.average_loss == pytest.approx((3.0 + 2.5 + 1.0) / 3)
    assert metrics.loss_matrix[0] == [2.0, None, None]
    json.dumps(metrics.as_dict())  # goes into metrics.jsonl as it is


def test_one_experience_has_no_forgetting_yet():
    metrics = continual_metrics(loss_matrix([(0, {"0": 2.0})]))
    assert metrics.forgetting is None and metrics.backward_transfer is None


def test_client_losses_merge_by_held_out_size_even_when_clients_have_seen_more():
    newest, losses = merge_client_losses([([2.0, 4.0], [10, 10]), ([1.0], [30])])
    assert newest == 1 and losses == {0: pytest.approx(1.25), 1: pytest.approx(4.0)}
