"""One stage of a secure round over the Grid, and the round's nodes once set up.

Each stage is one `send_and_receive`: a ConfigRecord naming the stage to each node, and
back either the stage's answer or the node's refusal (a `TrainReply` whose `refused` says
why); a node whose Message failed is simply absent, as if it had dropped out.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from flowerbed.protocol import TrainReply
from flowerbed.secagg.contract import CONFIGS, Key, RoundSetup
from flowerbed.server.secure_masks import SecureAggregationFailed


@dataclass
class Ring:
    """A round's nodes once the set-up and key exchange have settled: every node is every
    other's neighbour, and each has shared its secrets with all of them."""

    setup: RoundSetup
    keys: dict[int, tuple[bytes, bytes]]
    """Each node's two public keys."""
    shared: dict[int, ConfigRecord]
    """Each node's key-exchange answer: its shares, encrypted for each other node."""


def send_stage(
    grid: Grid, stage: str, configs: dict[int, dict[str, Any]], timeout: float
) -> tuple[dict[int, ConfigRecord], list[Message]]:
    """Send each node its stage config; the answers' configs by node, and the refusals."""
    messages = [
        Message(
            RecordDict({CONFIGS: ConfigRecord({Key.STAGE: stage, **config})}),
            dst_node_id=node,
            message_type=MessageType.TRAIN,
        )
        for node, config in configs.items()
    ]
    answers, refusals = {}, []
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            continue
        if CONFIGS in reply.content.config_records:
            answers[reply.metadata.src_node_id] = reply.content.config_records[CONFIGS]
        else:
            refusals.append(reply)
    return answers, refusals


def enough(present: Collection, threshold: int, stage: str, refusals: list[Message]) -> None:
    """Stop the round, naming the refusals, when fewer than `threshold` nodes are left."""
    if len(present) < threshold:
        raise SecureAggregationFailed(
            with_refusals(
                f"secure aggregation: {len(present)} client(s) remained after {stage}, "
                f"fewer than secagg.threshold={threshold}; the round cannot be unmasked",
                refusals,
            )
        )


def with_refusals(sentence: str, refusals: list[Message]) -> str:
    """The sentence, and the refusals that led to it."""
    said = [TrainReply.from_content(m.content).refused for m in refusals]
    return sentence + "".join(f"; {s}" for s in said if s)
