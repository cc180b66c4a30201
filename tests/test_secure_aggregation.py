"""Secure aggregation (SecAgg+): the server sees only the sum.

In one process (`tests/secure_round.py`, fast): the coordinator gets the survivors' mean
within quantization error, weighted as far as `max_weight` lets a client weigh; a client
dying in the key exchange gets the round set up again without it; clients dying after
it, refusing the round or sending a malformed update leave the others' sum, and one
dying after its masked update arrived leaves its update in it; a node's state survives
a fresh process. In real simulated federations
(slow): the same run with and without it ends within quantization error; no train reply
the server receives carries an update; a client that dies after the key exchange leaves a
round that completes with the survivors' sum; and what secure aggregation cannot serve
is refused at start.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from flwr.app import Context, Message, RecordDict
from safetensors.torch import load_file

from flowerbed.client.secure_state import SecAggState
from flowerbed.config import ConfigError
from flowerbed.config.node_policy import accepting_all
from flowerbed.run.prepare import prepare_run
from flowerbed.run.simulation import simulate
from flowerbed.secagg.contract import MASKED, UPDATE, Key, RoundSetup, Stage
from flowerbed.server.replies import RoundReplies
from flowerbed.server.secure_masks import SecureAggregationFailed
from flowerbed.tracking import RunLayout
from tests.conftest import section, tiny_config
from tests.recording import recorded_simulation
from tests.secure_round import as_coordinator, federation, secagg, secure_round, stage

SECURE = {"num_clients": 3, "rounds": 2, "secure_aggregation": "secaggplus"}
DP = {"mode": "dp_sgd", "target_epsilon": 8.0, "noise_seed": "run"}  # repeatable noise
TRAIN = {"batch_size": 16, "local_steps": 4, "lr": 1e-2}


SHAPES = {"a": (3, 4), "b": (5,)}
LEVEL = 2 / 2**22
"""One quantization step over +-1 at 22 bits: a client's rounding error is below it."""


@pytest.fixture
def coordinator(monkeypatch):
    as_coordinator(monkeypatch)


def updates(clients: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        {n: rng.uniform(-0.3, 0.3, shape).astype(np.float32) for n, shape in SHAPES.items()}
        for _ in range(clients)
    ]


def mean_of(ups: list[dict[str, np.ndarray]], weights: list[float] | None = None):
    w = np.asarray(weights or [1.0] * len(ups))
    return {n: sum(wi * u[n] for wi, u in zip(w, ups, strict=True)) / w.sum() for n in SHAPES}


def assert_close(got: dict[str, torch.Tensor] | None, want: dict[str, np.ndarray], tol: float):
    assert got is not None
    for name, value in want.items():
        assert np.abs(got[name].numpy() - value).max() < tol, name


def test_the_coordinator_gets_the_mean_of_the_updates_and_nothing_else(coordinator):
    ups = updates(4)
    grid = federation(ups)
    secure = secure_round(grid, secagg(), SHAPES)
    assert_close(secure.mean_update, mean_of(ups), LEVEL)
    masked = [r.content.array_records[MASKED] for r in grid.received if MASKED in r.content]
    assert len(masked) == 4 and all(len(m) == 0 for m in masked)  # dropped once summed
    assert all(UPDATE not in r.content for r in grid.received)  # the clear one stays home
    # 4 bytes a value and for the weight, plus a .npy header per array
    assert 4 * (1 + 12 + 5) < secure.masked_bytes <= 4 * (1 + 12 + 5) + 3 * 128


def test_weights_count_up_to_max_weight_and_no_further(coordinator):
    ups = updates(4, seed=1)
    grid = federation(ups, weights=[1.0, 2.0, 4.0, 400.0])  # the last one claims too much
    secure = secure_round(grid, secagg(max_weight=4.0), SHAPES)
    assert_close(secure.mean_update, mean_of(ups, [1.0, 2.0, 4.0, 4.0]), 4 * LEVEL)


def test_two_clients_dying_after_the_key_exchange_leave_the_others_sum(coordinator):
    ups = updates(5, seed=2)
    grid = federation(ups)
    grid.crash = {103: Stage.COLLECT, 105: Stage.COLLECT}  # neighbours of each other
    secure = secure_round(grid, secagg(threshold=3), SHAPES)
    assert_close(secure.mean_update, mean_of([ups[0], ups[1], ups[3]]), LEVEL)
    unmask = [m for m in grid.sent if stage(m) == Stage.UNMASK]
    assert len(unmask) == 3  # the survivors, each asked for the dead ones' key shares


def test_a_client_dying_in_the_key_exchange_gets_the_round_set_up_again_without_it(
    coordinator,
):
    ups = updates(5, seed=5)
    grid = federation(ups)
    grid.crash = {105: Stage.SHARE_KEYS}  # the others would never get its shares
    secure = secure_round(grid, secagg(), SHAPES)
    assert_close(secure.mean_update, mean_of(ups[:4]), LEVEL)
    # a node masks with every neighbour or refuses: the four start again without it
    assert [stage(m) for m in grid.sent].count(Stage.SETUP) == 5 + 4
    assert [stage(m) for m in grid.sent].count(Stage.SHARE_KEYS) == 5 + 4
    collect = [m for m in grid.sent if stage(m) == Stage.COLLECT]
    assert sorted(len(m.content.config_records["secagg"][Key.SOURCES]) for m in collect) == [3] * 4
    assert not RoundReplies.read(secure.replies).successful(1, 1)[1]  # and nobody refused


@pytest.mark.parametrize("dies_in", [Stage.CONSISTENCY, Stage.UNMASK])
def test_a_client_dying_after_it_sent_its_masked_update_leaves_its_update_in_the_sum(
    coordinator, dies_in
):
    ups = updates(5, seed=6)
    grid = federation(ups)
    grid.crash = {102: dies_in}  # its masked update is in; its self mask needs the others
    secure = secure_round(grid, secagg(), SHAPES)
    assert_close(secure.mean_update, mean_of(ups), LEVEL)


def test_a_node_refusing_the_set_up_leaves_a_round_of_the_others_and_its_sentence(coordinator):
    ups = updates(4, seed=3)
    picky = dataclasses.replace(accepting_all(), min_secure_clients=5, clients=[0])
    grid = federation(ups, policy=picky)
    secure = secure_round(grid, secagg(), SHAPES)
    assert_close(secure.mean_update, mean_of(ups[1:]), LEVEL)
    setups = [m for m in grid.sent if stage(m) == Stage.SETUP]
    assert len(setups) == 4 + 3  # set up again without it: every node gets what was announced
    answered, refused = RoundReplies.read(secure.replies).successful(1, 1)
    assert len(answered) == 3 and refused == {
        "0": "client 0 refuses the secure round: the coordinator sampled 4 client(s), fewer "
        "than the 5 its policy requires (min-secure-clients)"
    }


def test_a_malformed_masked_update_counts_as_its_client_dropping_out(coordinator):
    ups = updates(4, seed=4)
    grid = federation(ups)

    def drop_a_tensor(reply: Message) -> Message:
        if reply.metadata.src_node_id == 102 and stage(reply) == Stage.COLLECT:
            del reply.content.array_records[MASKED]["b"]
        return reply

    grid.tamper = drop_a_tensor
    secure = secure_round(grid, secagg(), SHAPES)
    assert_close(secure.mean_update, mean_of([ups[0], *ups[2:]]), LEVEL)
    assert "client 1's masked update does not have the round's layout" in secure.left_out["1"]


def test_a_node_masks_one_update_per_set_up(coordinator):
    updates = [{"w": np.full(4, 0.1 * i, np.float32)} for i in range(3)]
    grid = federation(updates)
    secure_round(grid, secagg(), {"w": (4,)})
    collect = next(m for m in grid.sent if stage(m) == Stage.COLLECT)
    # two updates under one set of masks would give away their difference
    node = collect.metadata.dst_node_id
    with pytest.raises(ValueError, match="expected the setup stage, not 'collect_masked_vectors'"):
        grid.app(collect, grid.contexts[node])


def test_a_nodes_round_survives_a_fresh_process():
    state = SecAggState(
        stage=Stage.COLLECT,
        node_id=7,
        setup=RoundSetup(5, 3, 2, 1.0, 22, 2.0),
        sk1=b"sk1",
        sk2=b"sk2",
        pk1=b"pk1",
        pk2=b"pk2",
        mask_seed=bytes(32),
        neighbours={7: (b"a", b"b"), 3: (b"c", b"d"), 9: (b"e", b"f")},
        seed_shares={7: b"s7", 9: b"s9"},
        key_shares={7: b"k7", 9: b"k9"},
        active=[7, 9],
    )
    context = Context(1, 7, {}, RecordDict(), {})
    state.save(context)
    assert SecAggState.load(context) == state
    assert SecAggState.load(Context(1, 7, {}, RecordDict(), {})) == SecAggState()


def weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "final_model" / "model.safetensors")


def close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> bool:
    return all(torch.allclose(a[k], b[k], atol=atol, rtol=0) for k in a)


@pytest.mark.slow
def test_a_secure_run_ends_within_quantization_error_of_the_same_run_in_the_clear(
    cache_dir, tmp_path
):
    clear = {**SECURE, "secure_aggregation": "off"}
    plain = simulate(
        tiny_config(cache_dir, privacy=DP, train=TRAIN, federation=clear), tmp_path / "clear"
    )
    secure_cfg = tiny_config(cache_dir, privacy=DP, train=TRAIN, federation=SECURE)
    secure = simulate(secure_cfg, tmp_path / "secure")
    # 22 bits over +-1 per coordinate: each round's mean is off by at most 2 / 2^22 = 5e-7
    assert close(weights(tmp_path / "clear"), weights(tmp_path / "secure"), atol=1e-5)
    assert secure["final_val_loss"] == pytest.approx(plain["final_val_loss"], abs=1e-4)


@pytest.mark.slow
def test_the_server_never_holds_one_clients_update(cache_dir, tmp_path):
    cfg = tiny_config(cache_dir, federation=SECURE)
    prepare_run(cfg, RunLayout(tmp_path))
    grid = recorded_simulation(cfg, tmp_path)
    train = [m for m in grid.received if m.metadata.message_type == "train"]
    assert len(train) == 2 * 5 * 3  # two rounds of five stages, three clients
    for reply in train:
        assert all(len(record) == 0 for record in reply.content.array_records.values())
    # the collect stage's replies: metrics, and a masked vector the server drops once summed
    masked = [m for m in train if MASKED in m.content.array_records]
    assert len(masked) == 6 and all("metrics" in m.content for m in masked)


@pytest.mark.slow
def test_a_client_dying_after_the_key_exchange_leaves_the_survivors_sum(cache_dir, tmp_path):
    # client 2 sets up and exchanges keys, then raises when asked for its masked update
    dies = {"kind": "crash", "clients": [2]}
    one_round = {**SECURE, "rounds": 1}  # later rounds' Adam steps would magnify the 5e-7
    masked_only = {"require_secure_aggregation": True}  # the survivors' policy holds
    secure = tiny_config(cache_dir, federation=one_round, faults=dies, node_policy=masked_only)
    summary = simulate(secure, tmp_path / "secure")
    assert summary["status"] == "completed" and not summary.get("refusals")
    # the equal-weight mean of the same two survivors (secagg.max_weight=1 by default)
    equal = {**one_round, "secure_aggregation": "off", "max_examples_per_client": 1}
    simulate(tiny_config(cache_dir, federation=equal, faults=dies), tmp_path / "clear")
    assert close(weights(tmp_path / "clear"), weights(tmp_path / "secure"), atol=1e-5)


@pytest.mark.slow
def test_too_few_survivors_to_unmask_stop_the_run_with_a_sentence(cache_dir, tmp_path):
    strict = {**SECURE, "rounds": 1, "min_clients": 2}  # every neighbour's share needed
    cfg = tiny_config(
        cache_dir,
        federation=strict,
        secagg={"threshold": 3},
        faults={"kind": "crash", "clients": [0]},
    )
    with pytest.raises(SecureAggregationFailed, match=r"fewer than secagg\.threshold=3"):
        simulate(cfg, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "secagg.threshold=3" in summary["error"]
    assert (tmp_path / "final_model" / "model.safetensors").exists()  # the global model kept


@pytest.mark.slow
def test_secure_aggregation_masks_only_the_adapters_and_composes_with_dp_replay_and_diloco(
    cache_dir, tmp_path
):
    lora = {"mode": "lora", "rank": 4, "target_modules": ["q_proj", "v_proj"]}
    together = {
        "adapter": lora,
        "strategy": section("strategy", "strategy=diloco").__dict__,
        "continual": {"mode": "replay", "experiences": 2, "replay_fraction": 0.25},
        "privacy": DP,
        "train": TRAIN,
    }
    cfg = tiny_config(cache_dir, federation=SECURE, **together)
    simulate(cfg, tmp_path / "secure")
    adapters = load_file(tmp_path / "secure" / "final_adapter" / "adapter_model.safetensors")
    # what went up: 4-byte integers for the adapters' values and the weight, small headers
    values = 4 * (1 + sum(t.numel() for t in adapters.values()))
    for line in (tmp_path / "secure" / "metrics.jsonl").read_text().splitlines():
        sent = json.loads(line)["masked_bytes_per_client"]
        assert values < sent < values + 200 * (1 + len(adapters))
    clear = tiny_config(cache_dir, federation={**SECURE, "secure_aggregation": "off"}, **together)
    simulate(clear, tmp_path / "clear")
    theirs = load_file(tmp_path / "clear" / "final_adapter" / "adapter_model.safetensors")
    assert close(adapters, theirs, atol=1e-5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["federation.num_clients=2", "federation.min_clients=1"], "at least 3 clients a round"),
        (["combiner=median"], "secure aggregation hides from the server"),
        (["privacy=user_level", "federation.transport_dtype=fp32"], "privacy=user_level clips"),
        (["secagg.threshold=9"], "secagg.threshold=9 is more shares than the 4 clients"),
        (
            ["federation.num_clients=6", "secagg.threshold=3"],
            "a coordinator lying about who dropped out",
        ),
        (
            ["federation.num_clients=20", "secagg.quantization_bits=28"],
            "overflow the protocol's 32-bit sum",
        ),
    ],
)
def test_what_secure_aggregation_cannot_serve_is_refused_at_start(overrides, message):
    from flowerbed.config import compose_config

    with pytest.raises(ConfigError, match=message):
        compose_config("federation.secure_aggregation=secaggplus", *overrides)
