"""The aggregation pipeline's stages on small tensors: admission's checks, and every
combiner against results computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from flowerbed.config import compose_config
from flowerbed.config.conf_dir import conf_dir
from flowerbed.protocol import TrainReply
from flowerbed.server.admission import Admission, ClientUpdate
from flowerbed.server.combiners import COMBINERS, combiner_for
from flowerbed.server.outer import OUTER_RULES, outer_optimizer
from tests.conftest import section


def updates(*rows: list[float], weights: list[float] | None = None) -> list[ClientUpdate]:
    """One client per row, its weights a single tensor `w`."""
    weights = weights or [1.0] * len(rows)
    return [
        ClientUpdate(TrainReply(i, int(w), 0, 0.0), {"w": torch.tensor(row)}, w)
        for i, (row, w) in enumerate(zip(rows, weights, strict=True))
    ]


def combine(name: str, batch: list[ClientUpdate], **settings) -> list[float]:
    cfg = section("combiner", f"combiner={name}", "federation.num_clients=5")
    for key, value in settings.items():
        setattr(cfg, key, value)
    current = {"w": torch.zeros_like(batch[0].tensors["w"])}
    return COMBINERS[name](cfg).combine(batch, current, 1)["w"].tolist()


ROWS = ([1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0], [100.0, -100.0])


def test_the_mean_is_weighted_by_the_admitted_examples():
    assert combine("mean", updates([0.0, 4.0], [3.0, 8.0], weights=[1.0, 3.0])) == [2.25, 7.0]


def test_the_trimmed_mean_cuts_each_end_of_every_coordinate():
    # 5 values, trim 0.2: one cut at each end. Coordinate 0: 2, 3, 4; coordinate 1: 10, 20, 30.
    assert combine("trimmed_mean", updates(*ROWS), trim_fraction=0.2) == [3.0, 20.0]


def test_the_median_takes_the_middle_of_every_coordinate():
    assert combine("median", updates(*ROWS)) == [3.0, 20.0]
    assert combine("median", updates(*ROWS[:4])) == [2.5, 25.0]  # an even count: the mean


def test_krum_picks_the_update_closest_to_its_neighbours():
    # f = 1, n = 5: each score sums the n - f - 2 = 2 smallest squared distances to others.
    # Squared distances between rows i, j (i, j < 4): 101 (j - i)^2; to the outlier, huge.
    # Scores: row 0: 101 + 404, row 1: 101 + 101, row 2: 101 + 101, row 3: 101 + 404.
    # Rows 1 and 2 tie at 202: the first (row 1) is chosen.
    assert combine("krum", updates(*ROWS), faulty_clients=1) == [2.0, 20.0]


def test_multikrum_averages_the_best_scored_updates():
    # n - f = 4 best scores are rows 0-3 (the outlier scores far higher): their mean.
    assert combine("multikrum", updates(*ROWS), faulty_clients=1) == [2.5, 25.0]
    assert combine("multikrum", updates(*ROWS), faulty_clients=1, selected=2) == [2.5, 25.0]


def test_every_combiner_and_outer_rule_named_in_conf_builds():
    for path in sorted((conf_dir() / "combiner").glob("*.yaml")):
        cfg = compose_config(f"combiner={path.stem}", "federation.num_clients=5")
        assert type(combiner_for(cfg)) is COMBINERS[cfg.combiner.name]
    assert set(COMBINERS) == {p.stem for p in (conf_dir() / "combiner").glob("*.yaml")}
    named = set()
    for path in sorted((conf_dir() / "strategy").glob("*.yaml")):
        cfg = compose_config(f"strategy={path.stem}")
        assert type(outer_optimizer(cfg.strategy)) is OUTER_RULES[cfg.strategy.name]
        named.add(cfg.strategy.name)
    assert set(OUTER_RULES) == named  # every rule has a file (fedavg_adamw is fedavg's too)
    user_level = compose_config("privacy=user_level")
    assert combiner_for(user_level).name == "clipped_noised_mean"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["combiner=krum"], "tolerates combiner.faulty_clients=1 only with at least 5 clients"),
        (["combiner=median", "combiner.faulty_clients=2"], "at least 5 a round, not 4"),
        (["privacy=user_level", "combiner=median"], "privacy=user_level clips and noises"),
        (["faults=scaled"], "faults=scaled needs faults.clients"),
    ],
)
def test_a_combiner_without_enough_clients_is_refused_at_start(overrides, message):
    from flowerbed.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        compose_config(*overrides)


def record(**tensors: np.ndarray) -> ArrayRecord:
    return ArrayRecord({name: Array(value) for name, value in tensors.items()})


SENT = record(w=np.zeros((2, 2), np.float32), b=np.zeros(2, np.float32))
CURRENT = {"w": torch.zeros(2, 2), "b": torch.zeros(2)}


def admit(*replies: TrainReply, **federation):
    cfg = section("federation", *[f"federation.{k}={v}" for k, v in federation.items()])
    return Admission(cfg, equal_weights=False).admit(list(replies), SENT, CURRENT)


def reply(partition: int, examples: int = 10, **tensors: np.ndarray) -> TrainReply:
    arrays = {"w": np.ones((2, 2), np.float32), "b": np.ones(2, np.float32)} | tensors
    return TrainReply(partition, examples, 0, 0.0, weights=record(**arrays))


def test_admission_names_each_reply_it_leaves_out_and_why():
    admitted, rejected = admit(
        reply(0),
        reply(1, w=np.full((2, 2), np.nan, np.float32)),
        reply(2, w=np.ones((3, 2), np.float32)),
        reply(3, b=np.ones(2, np.float16)),
        TrainReply(4, 10, 0, 0.0, weights=record(w=np.ones((2, 2), np.float32))),
        reply(5, examples=0),
    )
    assert [u.partition_id for u in admitted] == [0]
    assert rejected == {
        "1": "client 1's reply is left out: its weights hold NaN or infinite values (in w)",
        "2": "client 2's reply is left out: tensor w is float32[3, 2] where the model's is "
        "float32[2, 2]",
        "3": "client 3's reply is left out: tensor b is float16[2] where the model's is float32[2]",
        "4": "client 4's reply is left out: its weights do not match the model's tensors (it "
        "lacks b)",
        "5": "client 5's reply is left out: it claims an aggregation weight of 0",
    }


def test_admission_caps_weights_and_clips_or_rejects_long_updates():
    (capped,), _ = admit(reply(0, examples=10_000), max_examples_per_client=50)
    assert capped.weight == 50
    norm = math.sqrt(6)  # six ones
    (clipped,), _ = admit(reply(0), max_update_norm=1.0, update_norm_policy="clip")
    clipped_norm = math.sqrt(sum(float(t.pow(2).sum()) for t in clipped.tensors.values()))
    assert clipped_norm == pytest.approx(1.0) and norm > 1
    admitted, rejected = admit(reply(0), max_update_norm=1.0)  # reject: the default
    assert not admitted and "norm 2.449 is above federation.max_update_norm=1" in rejected["0"]


def test_auto_bounds_come_from_the_round_itself():
    # two replies, norms 2.449 and 60: each is held to 10 x the other (the lower median)
    long = reply(1, examples=10_000, w=np.full((2, 2), 30, np.float32))
    admitted, rejected = admit(reply(0), long)
    assert [u.partition_id for u in admitted] == [0] and admitted[0].norm == math.sqrt(6)
    why = "norm 60.02 is above federation.max_update_norm=auto (10 x the round's median update"
    assert f"{why} norm 2.449)" in rejected["1"]
    # a claim counts up to 4 x the largest of the others'; under DP every reply weighs 1
    replies = [reply(0, examples=10), reply(1, examples=30), reply(2, examples=10_000)]
    assert [u.weight for u in admit(*replies)[0]] == [10, 30, 120]
    cfg = section("federation")
    equal, _ = Admission(cfg, equal_weights=True).admit(replies, SENT, CURRENT)
    assert [u.weight for u in equal] == [1, 1, 1]
    # secure aggregation: no single norm to derive `auto` from, so the sum is not bounded
    huge = {"w": torch.full((2, 2), 1e6), "b": torch.zeros(2)}
    summed = Admission(cfg, equal_weights=False).bounded_sum(huge, CURRENT)
    assert float(summed["w"][0, 0]) == 1e6
