"""Every privacy and security promise, played by the party that would break it.

Each test runs an attack the way its attacker would, with the project's own code and
what that party can see: a curious coordinator (it sees every reply, chooses the
instructions, the sample and the SecAgg+ parameters), a hostile institution (it chooses
its own reply), a local user on a node's machine (it reads what file modes allow) and a
careless operator (two processes on one state directory, a restored backup). The threat
model these tests stand for is in docs/privacy.md ("Who can learn what").
"""

from __future__ import annotations

import json

import pytest
import torch

from flowerbed.client.faults import misbehave
from flowerbed.config import FlowerbedConfig, compose_config
from flowerbed.config.robustness import FaultsConfig
from flowerbed.model.transport import to_array_record
from flowerbed.protocol import TrainReply
from flowerbed.run.simulation import simulate
from flowerbed.server.outer import outer_optimizer
from flowerbed.server.pipeline import Aggregate, AggregationPipeline
from tests.conftest import tiny_config

# --- a hostile institution against the defaults ---
# The attacker is the last client of the round. It trains as the others do, then changes its
# reply as `client/faults.py` plays it (a simulated node runs the same function), and the
# server aggregates with conf/config.yaml's defaults, DP-SGD included. Honest updates share a
# direction and differ by noise, as one round's updates do (same weights, steps, learning rate).

Weights = dict[str, torch.Tensor]
SHAPES = {"embed": (64, 16), "proj": (16, 16)}


def honest_round(clients: int, seed: int = 0) -> tuple[Weights, list[Weights]]:
    """The global weights, and the weights each client trained from them."""
    generator = torch.Generator().manual_seed(seed)

    def draw(scale: float) -> Weights:
        return {k: scale * torch.randn(s, generator=generator) for k, s in SHAPES.items()}

    current, direction = draw(1.0), draw(0.01)
    trained = []
    for _ in range(clients):
        noise = draw(0.005)
        trained.append({k: current[k] + direction[k] + noise[k] for k in SHAPES})
    return current, trained


def hostile(kind: str, scale: float, trained: Weights, current: Weights) -> Weights:
    """What the attacker sends in place of `trained`: its fault, as a simulated node plays it."""
    faults = FaultsConfig(kind=kind, clients=[0], scale=scale)
    return misbehave(faults, TrainReply(0, 1, 0, 0.0), trained, current, 1)[1]


def aggregate(
    cfg: FlowerbedConfig, sent: list[Weights], claims: list[int], current: Weights
) -> Aggregate:
    """One round of the server's pipeline on these replies (claims: their weights)."""
    replies = [
        TrainReply(i, claim, 0, 0.0, weights=to_array_record(weights, "fp32"))
        for i, (weights, claim) in enumerate(zip(sent, claims, strict=True))
    ]
    pipeline = AggregationPipeline(cfg, outer_optimizer(cfg.strategy))
    return pipeline.aggregate(1, replies, to_array_record(current, "fp32"), current)


def step(new: Weights, current: Weights) -> torch.Tensor:
    return torch.cat([(new[k] - current[k]).reshape(-1) for k in SHAPES])


def mean_of(trained: list[Weights]) -> Weights:
    return {k: torch.stack([t[k] for t in trained]).mean(dim=0) for k in SHAPES}


def cosine(result: Aggregate, current: Weights, honest: list[Weights]) -> float:
    """Cosine of the global step with the honest clients' mean step."""
    assert result.weights is not None
    honest_step = step(mean_of(honest), current)
    return float(
        torch.nn.functional.cosine_similarity(step(result.weights, current), honest_step, 0)
    )


def test_an_update_flipped_and_scaled_1e4_is_left_out_by_the_default_config():
    cfg = compose_config()  # DP-SGD, mean, max_update_norm=auto
    current, trained = honest_round(4)
    sent = [*trained[:3], hostile("scaled", -1e4, trained[3], current)]
    result = aggregate(cfg, sent, [1, 1, 1, 1], current)
    assert set(result.rejected) == {"3"}
    assert "federation.max_update_norm=auto (10 x the round's median" in result.rejected["3"]
    assert result.weights is not None
    expected = mean_of(trained[:3])
    assert all(torch.allclose(result.weights[k], expected[k], atol=1e-6) for k in SHAPES)
    assert cosine(result, current, trained[:3]) > 0.999


@pytest.mark.parametrize("privacy", ["dp_sgd", "user_level"])
def test_under_dp_a_reply_claiming_weight_1e9_weighs_1_like_every_other(privacy):
    cfg = compose_config(f"privacy={privacy}")
    current, trained = honest_round(4)
    sent = [*trained[:3], hostile("sign_flip", 1.0, trained[3], current)]  # as long as honest
    result = aggregate(cfg, sent, [1, 1, 1, 10**9], current)  # node policy `exact`: any count
    assert not result.rejected and [u.weight for u in result.admitted] == [1.0] * 4
    if privacy == "dp_sgd":  # (user-level DP adds its noise to the same equal-weight mean)
        assert result.weights is not None
        expected = mean_of(sent)
        assert all(torch.allclose(result.weights[k], expected[k], atol=1e-6) for k in SHAPES)
        assert cosine(result, current, trained[:3]) > 0.3


def test_without_dp_a_claim_of_1e9_counts_as_4_times_the_largest_honest_claim():
    cfg = compose_config("privacy=off")  # max_examples_per_client=auto
    current, trained = honest_round(4)
    flipped = hostile("sign_flip", 1.0, trained[3], current)  # as long as an honest update
    result = aggregate(cfg, [*trained[:3], flipped], [2400, 2736, 3100, 10**9], current)
    assert result.weights is not None
    theirs = step(flipped, current)  # the step a claim of 1e9 made the server take before
    assert (step(result.weights, current) - theirs).norm() > 0.5 * theirs.norm()
    cap = cfg.federation.examples_factor * 3100  # the largest claim of the others
    assert [u.weight for u in result.admitted] == [2400, 2736, 3100, cap]


def test_multikrum_averages_a_selected_hostile_update_claiming_1e9_as_one_of_equals():
    # Without DP and with the weight cap off: the operator trusts Multi-Krum (f = 1 of 5).
    cfg = compose_config(
        "privacy=off", "combiner=multikrum", "federation.num_clients=5",
        "federation.max_examples_per_client=null",
    )  # fmt: skip
    current, trained = honest_round(5)
    honest = trained[:4]
    # The attacker sends the honest clients' mean step cut by 30% (it slows everyone down):
    # the most central update of the round, so Krum keeps it, and its claim of 1e9 made it
    # the whole step before.
    centre, pull = mean_of(honest), step(mean_of(honest), current).norm()
    poisoned = {k: centre[k] - 0.3 * (centre[k] - current[k]) for k in SHAPES}
    result = aggregate(cfg, [*honest, poisoned], [2736] * 4 + [10**9], current)
    assert result.weights is not None and pull > 0
    got = step(result.weights, current)
    # the equal-weight mean of the attacker and three honest updates (Krum drops one)
    selections = [[*honest[:i], *honest[i + 1 :], poisoned] for i in range(4)]
    assert any(torch.allclose(got, step(mean_of(s), current), atol=1e-6) for s in selections)
    assert (got - step(poisoned, current)).norm() > 0.05 * pull  # not the attacker's step


@pytest.mark.slow
def test_a_client_flipping_its_update_x1e4_leaves_a_default_run_within_10_percent(
    cache_dir, tmp_path
):
    # conf/config.yaml's defaults (DP-SGD, replay, mean, auto bounds) on a tiny model;
    # the noise drawn from the run's seed so that the two runs differ only by the attacker.
    dp = {"mode": "dp_sgd", "target_epsilon": 8.0, "noise_seed": "run"}
    settings = {"privacy": dp, "continual": {"mode": "replay"}, "federation": {"num_clients": 4}}
    honest = simulate(tiny_config(cache_dir, **settings), tmp_path / "honest")
    attack = {"kind": "scaled", "scale": -1e4, "clients": [3]}  # faults=scaled faults.scale=-1e4
    hostile_run = simulate(tiny_config(cache_dir, **settings, faults=attack), tmp_path / "hostile")
    for line in (tmp_path / "hostile" / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        assert row["clients"] == 3 and set(row["rejected_clients"]) == {"3"}
        assert "is above federation.max_update_norm=auto" in row["rejected_clients"]["3"]
    assert honest["final_val_loss"] < honest["initial_val_loss"] - 0.3  # the honest run learns
    assert hostile_run["final_val_loss"] == pytest.approx(honest["final_val_loss"], rel=0.1)
