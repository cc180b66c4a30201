"""Secure aggregation (SecAgg+) in real simulated federations: the server sees only the sum.

The same run with and without it ends within quantization error; no train reply the
server receives carries an update; a client that dies after the key exchange leaves a
round that completes with the survivors' sum; and what secure aggregation cannot serve
is refused at start.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from flowerbed.config import ConfigError
from flowerbed.run.prepare import prepare_run
from flowerbed.run.simulation import simulate
from flowerbed.server.secure_masks import SecureAggregationFailed
from flowerbed.tracking import RunLayout
from tests.conftest import section, tiny_config
from tests.recording import recorded_simulation

SECURE = {"num_clients": 3, "rounds": 2, "secure_aggregation": "secaggplus"}
DP = {"mode": "dp_sgd", "target_epsilon": 8.0, "noise_seed": "run"}  # repeatable noise
TRAIN = {"batch_size": 16, "local_steps": 4, "lr": 1e-2}


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
    assert len(train) == 2 * 4 * 3  # two rounds of four stages, three clients
    for reply in train:
        assert all(len(record) == 0 for record in reply.content.array_records.values())
    # the collect stage's replies: metrics, and a masked vector the server drops once summed
    masked = [m for m in train if "masked_params" in m.content.config_records["secaggplus_configs"]]
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
    # what went up: 8-byte integers for the adapters' values and the weight, small headers
    values = 8 * (1 + sum(t.numel() for t in adapters.values()))
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
        (["secagg.threshold=9"], "secagg.threshold=9 is more shares than the 4 neighbours"),
        (
            ["federation.num_clients=6", "secagg.neighbours=5", "secagg.threshold=2"],
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
