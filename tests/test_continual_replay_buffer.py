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
