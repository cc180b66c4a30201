"""The node has the last word on its privacy, and decides what leaves it.

A client refuses server settings weaker than its policy, with one sentence that reaches
the server's records; its ledger enforces its own ε cap; under DP-SGD no reply carries
an exact loss or count unless its policy says `release: exact`, and then the ledger and
the run's records say so.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from flowerbed.config import ConfigError
from flowerbed.config.node_policy import accepting_all, policy_from_node_config
from flowerbed.config.rules import SchemaError
from flowerbed.privacy.ledger import FILENAME as LEDGER
from flowerbed.privacy.planning import plan
from flowerbed.privacy.policy import node_budget, refusal
from flowerbed.protocol import EvaluateReply, TrainReply
from flowerbed.run.prepare import prepare_run
from flowerbed.run.simulation import continue_simulation, simulate
from flowerbed.server.progress import progress_line
from flowerbed.server.records import RoundRecord
from flowerbed.tracking import RunLayout
from tests.conftest import section, tiny_config
from tests.recording import recorded_simulation

DP = {"mode": "dp_sgd", "target_epsilon": 8.0, "delta": 1e-5}
TRAIN = {"batch_size": 16, "local_steps": 4, "lr": 1e-2}


def dp(**values):
    return dataclasses.replace(section("privacy", "privacy=dp_sgd"), **values)


def test_a_policy_refuses_whatever_is_weaker_and_names_both_settings():
    strict = dataclasses.replace(
        accepting_all(), require_dp=True, max_epsilon=4.0, max_delta=1e-6, accountant="rdp"
    )
    assert refusal(strict, section("privacy", "privacy=off"), 3, False) == (
        "client 3 refuses the server's privacy settings: its policy requires DP-SGD at the "
        "node (require-dp, or a demand that needs it), but the server asked for privacy=off"
    )
    assert "privacy=user_level" in refusal(
        strict, section("privacy", "privacy=user_level"), 3, False
    )
    assert "accepts δ ≤ 1e-06 (max-delta), but the server asked for privacy.delta=1e-05" in (
        refusal(strict, dp(), 3, False)
    )
    ask = dp(delta=1e-6, target_epsilon=8.0)
    assert "accepts ε ≤ 4 over the node's life (max-epsilon), but the server asked for " in (
        refusal(strict, ask, 3, False)
    )
    assert "privacy.target_epsilon=8" in refusal(strict, ask, 3, False)
    capped = dp(delta=1e-6, target_epsilon=None, noise_multiplier=1.0, max_epsilon=6.0)
    assert "privacy.max_epsilon=6" in refusal(strict, capped, 3, False)
    within = dp(delta=1e-6, target_epsilon=3.0)
    assert "accountant=prv" in refusal(strict, within, 3, False)
    documents = dataclasses.replace(strict, unit="document")
    assert "protects each document (privacy-unit), but the server asked for " in refusal(
        documents, dataclasses.replace(within, accountant="rdp", unit="sequence"), 3, False
    )
    assert (
        refusal(documents, dataclasses.replace(within, accountant="rdp", unit="user"), 3, False)
        is None
    )
    assert refusal(strict, dataclasses.replace(within, accountant="rdp"), 3, False) is None


def test_a_deployed_node_refuses_noise_the_server_could_reproduce():
    repeatable = dp(noise_seed="run")
    assert refusal(accepting_all(), repeatable, 0, deployed=False) is None
    assert "privacy.noise_seed=run, which lets anyone who knows the run's seed" in (
        refusal(accepting_all(), repeatable, 0, deployed=True)
    )


def test_a_node_requiring_secure_aggregation_refuses_an_update_in_the_clear():
    masked_only = policy_from_node_config({"require-secure-aggregation": "true"})
    assert refusal(masked_only, dp(), 3, True, masked=False) == (
        "client 3 refuses the server's privacy settings: its policy requires secure "
        "aggregation (require-secure-aggregation), but the server asked for the update in "
        "the clear (federation.secure_aggregation=off)"
    )
    assert refusal(masked_only, dp(), 3, True, masked=True) is None
    assert refusal(masked_only, dp(), 3, True) is None  # an evaluate Message: no update


def test_the_nodes_cap_binds_whatever_the_servers_budget():
    cap = dataclasses.replace(accepting_all(), max_epsilon=4.0)
    assert node_budget(cap, dp(target_epsilon=3.0)) == 3.0
    assert node_budget(cap, dp(target_epsilon=None, noise_multiplier=1.0)) == 4.0
    assert node_budget(accepting_all(), dp(target_epsilon=None, noise_multiplier=1.0)) is None


def test_a_supernode_states_its_policy_in_its_node_config():
    policy = policy_from_node_config(
        {"require-dp": "true", "max-epsilon": 4, "max-delta": 1e-6, "release": "exact",
         "privacy-unit": "document"}
    )  # fmt: skip
    assert policy.unit == "document"
    assert (policy.require_dp, policy.max_epsilon, policy.max_delta) == (True, 4.0, 1e-6)
    assert policy.release == "exact" and policy.accountant is None
    # nothing stated fails closed: DP-SGD required, nothing exact leaves, δ at most 1e-5
    silent = policy_from_node_config({})
    assert (silent.require_dp, silent.release, silent.delta_cap) == (True, "minimal", 1e-5)
    with pytest.raises(SchemaError, match="privacy policy: max-epsilon must be > 0, got -1"):
        policy_from_node_config({"max-epsilon": -1})
    with pytest.raises((SchemaError, ConfigError), match="release must be one of minimal, exact"):
        policy_from_node_config({"release": "everything"})


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("privacy", "policy", "sentence"),
    [
        (DP, {"max_epsilon": 4.0}, "accepts ε ≤ 4 over the node's life (max-epsilon), but the "
         "server asked for privacy.target_epsilon=8"),
        ({"mode": "off"}, {"require_dp": True}, "requires DP-SGD at the node (require-dp, or a "
         "demand that needs it), but the server asked for privacy=off"),
    ],
    ids=["epsilon-4-against-8", "dp-required-against-off"],
)  # fmt: skip
def test_a_refusing_client_is_named_in_the_runs_records(
    cache_dir, tmp_path, privacy, policy, sentence
):
    cfg = tiny_config(
        cache_dir,
        privacy=privacy,
        train=TRAIN,
        federation={"rounds": 2, "min_clients": 1},
        node_policy={**policy, "clients": [1]},
    )
    summary = simulate(cfg, tmp_path)
    expected = f"client 1 refuses the server's privacy settings: its policy {sentence}"
    for row in rows(tmp_path):
        assert row["refused_clients"] == {"1": expected}
        assert (row["clients"], row["failed_clients"]) == (1, 0)
    assert summary["status"] == "completed" and summary["refusals"] == {"1": expected}
    assert "| 1 clients | 1 refused" in progress_line(RoundRecord.from_dict(rows(tmp_path)[0]), 2)
    assert not (RunLayout(tmp_path).client_state(1) / LEDGER).exists()  # it never trained


@pytest.mark.slow
def test_the_nodes_ledger_stops_the_client_at_its_own_cap(cache_dir, tmp_path):
    uncapped = {"mode": "dp_sgd", "noise_multiplier": 0.8}  # the server sets no budget
    cfg = tiny_config(cache_dir, privacy=uncapped, train=TRAIN, federation={"rounds": 3})
    prepare_run(cfg, RunLayout(tmp_path))
    records = min(len(np.load(p)) for p in tmp_path.glob("clients/*/data/train.tokens.npy"))
    one, two = (plan(records, 16, r, 4, 1e-5, noise_multiplier=0.8).epsilon for r in (1, 2))
    capped = dataclasses.replace(cfg, node_policy=accepting_all())
    capped.node_policy.max_epsilon = (one + two) / 2
    summary = continue_simulation(capped, tmp_path)
    assert summary["rounds"] == 1 and summary["stop_reason"] == "privacy budget spent"
    assert summary["epsilon_max"] == pytest.approx(one, rel=0.01)


def released(grid) -> tuple[list[dict], list[dict]]:
    """The metrics of every train and evaluate reply the server received."""
    trains, evaluates = [], []
    for message in grid.received:
        metrics = dict(message.content["metrics"])
        kind = message.metadata.message_type
        (trains if kind == "train" else evaluates).append(metrics)
    return trains, evaluates


@pytest.mark.slow
def test_under_dp_no_reply_carries_an_exact_loss_or_count_unless_the_node_says_so(
    cache_dir, tmp_path
):
    settings = {"privacy": DP, "train": TRAIN, "federation": {"rounds": 2}}
    cfg = tiny_config(cache_dir, **settings)
    prepare_run(cfg, RunLayout(tmp_path / "minimal"))
    trains, evaluates = released(recorded_simulation(cfg, tmp_path / "minimal"))
    assert len(trains) == 4 and len(evaluates) == 2
    planned = TRAIN["local_steps"] * TRAIN["batch_size"] * cfg.data.seq_len
    for metrics in trains:
        assert metrics["num-examples"] == 1 and metrics["tokens"] == planned
        assert not {"train-loss", "heldout.heldout-loss", "heldout.experience-losses"} & set(
            metrics
        )
        assert round(metrics["epsilon"], 2) == metrics["epsilon"]
    for metrics in evaluates:
        assert metrics["num-examples"] == 1 and "heldout-loss" not in metrics
    node_log = RunLayout(tmp_path / "minimal").client_state(0) / "node_metrics.jsonl"
    assert "train-loss" in node_log.read_text()  # the node keeps its exact values

    exact = tiny_config(cache_dir, **settings, node_policy={"release": "exact"})
    prepare_run(exact, RunLayout(tmp_path / "exact"))
    trains, evaluates = released(recorded_simulation(exact, tmp_path / "exact"))
    assert all(m["train-loss"] > 0 and m["num-examples"] > 1 for m in trains)
    assert all(m["outside-guarantee"] == 1 for m in trains + evaluates)
    summary = json.loads((tmp_path / "exact" / "summary.json").read_text())
    assert summary["outside_guarantee_clients"] == [0, 1]
    ledger = json.loads((RunLayout(tmp_path / "exact").client_state(0) / LEDGER).read_text())
    assert ledger["exact_metrics_rounds"] == [1, 2, 2]  # round 2 trained, then the final model


def test_a_reply_without_losses_round_trips():
    withheld = TrainReply(0, 1, 64, 1.0, heldout=EvaluateReply(0, 1))
    again = TrainReply.from_content(withheld.to_content())
    assert again.train_loss is None and again.heldout == EvaluateReply(0, 1)
    refused = EvaluateReply(2, 0, refused="client 2 refuses")
    assert EvaluateReply.from_content(refused.to_content()).refused == "client 2 refuses"


def test_a_supernode_states_the_fewest_clients_it_hides_among():
    assert accepting_all().min_secure_clients == 3
    for value in (5, "5"):  # typed by Flower's TOML reading, or quoted
        policy = policy_from_node_config({"min-secure-clients": value})
        assert policy.min_secure_clients == 5
    with pytest.raises(SchemaError, match="min-secure-clients must be >= 3, got 2"):
        policy_from_node_config({"min-secure-clients": 2})


def test_a_delta_not_below_one_over_the_units_is_refused_whatever_the_policy_allows():
    from flowerbed.privacy.policy import delta_refusal

    assert "privacy.delta=0.01 is not below 1/200" in delta_refusal(dp(delta=0.01), 2, 200)
    assert delta_refusal(dp(delta=1e-5), 2, 200) is None
    assert delta_refusal(section("privacy", "privacy=off"), 2, 10**9) is None
