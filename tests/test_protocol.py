"""The wire protocol: every Message the server and clients exchange survives a round trip,
and no module but `flowerbed.protocol` (with its encoding, `flowerbed.wire`) spells a
Message key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MessageType, RecordDict

from flowerbed.protocol import (
    CONFIG,
    EvaluateInstructions,
    EvaluateReply,
    ModelSpec,
    TrainInstructions,
    TrainReply,
    ask_heldout,
    global_weights,
)
from tests.conftest import section

PLATFORM = Path(__file__).resolve().parents[1] / "platform" / "flowerbed"
ADAPTER = section("adapter", "adapter=lora", "adapter.target_modules=[q_proj,v_proj]")
DP_SGD, OFF = section("privacy", "privacy=dp_sgd"), section("privacy", "privacy=off")
LORA_ON_A_BASE = ModelSpec('{"model_type": "llama"}', ADAPTER, "runs/a/final_model", 3, "0123abcd")


def train_instructions(**privacy: str) -> TrainInstructions:
    overrides = [f"privacy.{k}={v}" for k, v in privacy.items()]
    return TrainInstructions(
        round=3,
        total_rounds=6,
        seed=7,
        model=ModelSpec(architecture='{"model_type": "llama"}', adapter=ADAPTER),
        transport_dtype="bf16",
        arrival_every=2,
        uniform_weights=False,
        keep_inner_state=False,
        evaluate_incoming=False,
        train=section("train", "train.lr=0.02"),
        privacy=section("privacy", "privacy=dp_sgd", *overrides),
        continual=section("continual", "continual=replay", "continual.arrival_every=null"),
    )


def through_the_wire(instructions) -> RecordDict:
    return RecordDict({CONFIG: instructions.to_record()})


@pytest.mark.parametrize(
    "instructions",
    [
        train_instructions(),  # target_epsilon given, noise_multiplier None
        train_instructions(target_epsilon="null", noise_multiplier="1.1", max_epsilon="5"),
        EvaluateInstructions(3, ModelSpec("{}", ADAPTER), "fp16", 0, 8, 0, True, DP_SGD),
        EvaluateInstructions(3, LORA_ON_A_BASE, "fp32", 0, 8, 0, False, OFF),
    ],
    ids=["train", "train-noise", "evaluate", "evaluate-lora"],
)
def test_instructions_round_trip(instructions):
    again = type(instructions).from_content(through_the_wire(instructions))
    assert again == instructions


def test_instructions_travel_as_flat_typed_values_with_the_round_where_flower_puts_it():
    record = train_instructions().to_record()
    assert record["server-round"] == 3 and record["train.lr"] == 0.02
    assert record["privacy.target-epsilon"] == 8.0 and "privacy.noise-multiplier" not in record
    assert all(not isinstance(v, dict) for v in record.values())


PER_EXPERIENCE = EvaluateReply(0, 8, 2.5, experience_losses=[2.5], experience_sizes=[8])


@pytest.mark.parametrize(
    "reply",
    [
        TrainReply(1, 120, 4096, 1.5, train_loss=3.25, epsilon=2.5, noise_multiplier=0.9),
        TrainReply(0, 0, 0, 0.0, epsilon=8.0, budget_exhausted=True),
        TrainReply(1, 120, 4096, 1.5, train_loss=3.25, heldout=EvaluateReply(1, 30, 2.75)),
        TrainReply(0, 0, 0, 0.0, budget_exhausted=True, heldout=PER_EXPERIENCE),
        EvaluateReply(2, 30, 2.75, experience_losses=[2.5, 3.0], experience_sizes=[10, 20]),
        EvaluateReply(2, 30, 2.75),
    ],
    ids=[
        "trained",
        "budget-exhausted",
        "trained-with-heldout",
        "exhausted-with-heldout",
        "per-experience",
        "mean-only",
    ],
)
def test_replies_round_trip(reply):
    assert type(reply).from_content(reply.to_content()) == reply


def test_asking_one_node_for_heldout_losses_leaves_the_shared_payload_alone(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_run_id", "_node_id", "_task_id"):  # as a running ServerApp has them
        monkeypatch.setattr(TaskIdentity, name, 1)
    weights = ArrayRecord({"w": Array(np.zeros(2, dtype=np.float32))})
    shared = RecordDict({"arrays": weights, CONFIG: train_instructions().to_record()})
    message = Message(shared, dst_node_id=5, message_type=MessageType.TRAIN)
    asked = ask_heldout(message)
    assert TrainInstructions.from_content(asked.content).evaluate_incoming
    assert not TrainInstructions.from_content(message.content).evaluate_incoming
    assert asked.metadata.dst_node_id == 5 and asked.metadata.message_type == MessageType.TRAIN
    assert global_weights(asked.content) is weights  # the weights are not copied


def test_a_train_reply_carries_its_weights_and_none_when_it_did_not_train():
    weights = ArrayRecord({"w": Array(np.arange(6, dtype=np.float32).reshape(2, 3))})
    reply = dataclasses.replace(TrainReply(1, 10, 100, 0.5, train_loss=1.0), weights=weights)
    again = TrainReply.from_content(reply.to_content())
    assert np.array_equal(again.weights["w"].numpy(), weights["w"].numpy())
    assert TrainReply.from_content(TrainReply(0, 0, 0, 0.0).to_content()).weights is None


def test_no_other_module_spells_a_message_key():
    heldout = EvaluateReply(1, 1, 1.0, [1.0], [1])
    keys = set(train_instructions().to_record()) | set(
        TrainReply(1, 1, 1, 1.0, 1.0, 1.0, 1.0, True, heldout).to_content()["metrics"]
    )
    keys |= set(EvaluateReply(1, 1, 1.0, [1.0], [1]).to_content()["metrics"])
    keys -= {"partition-id"}  # also Flower's node-config key, which client/node.py reads
    records = {"arrays", "metrics", "config"}  # a Message's records (common words elsewhere)
    for source in PLATFORM.rglob("*.py"):
        if source.name in ("protocol.py", "wire.py"):  # the messages, and their encoding
            continue
        text = source.read_text()
        handles_messages = source.parent.name in {"client", "server", "continual"}
        distinctive = {k for k in keys if "-" in k or "." in k}  # common words are not keys
        checked = keys | records if handles_messages else distinctive
        spelled = sorted(k for k in checked if f'"{k}"' in text or f"'{k}'" in text)
        assert not spelled, f"{source.relative_to(PLATFORM)} spells {spelled}"
