"""A SecAgg+ round in this process: the ServerApp's side (`SecAggPlus`) and each node's
mod (`client/secure.py`) with Messages handed from one to the other directly, so a test
can play the coordinator or a client and see every Message, in milliseconds.

Each node's ClientApp "trains" by replying with the update the test gives it; a test
hostile at the server side rewrites the Messages it sends (`lie`), one hostile at a
client rewrites that client's replies (`tamper`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from flwr.app import Context, Error, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp

from flowerbed.client.node import Node
from flowerbed.client.secure import secure_aggregation_mod, with_update
from flowerbed.config.node_policy import NodePolicyConfig, accepting_all
from flowerbed.config.secure import SecureAggregationConfig
from flowerbed.protocol import TrainReply
from flowerbed.secagg.contract import CONFIGS, Key
from flowerbed.server.secure_aggregation import SecAggPlus, SecureSum

Update = dict[str, np.ndarray]


def secagg(**values) -> SecureAggregationConfig:
    """The `secagg` section with its defaults, `values` changed."""
    defaults = {"threshold": None, "clipping_range": 1.0}
    defaults |= {"quantization_bits": 22, "max_weight": 1.0}
    return SecureAggregationConfig(**(defaults | values))


def node_of(policy: NodePolicyConfig) -> Callable[[Context], Node]:
    """Nodes holding `policy` (those `policy.clients` names, when it names any)."""

    def node(context: Context) -> Node:
        partition = int(context.node_config["partition-id"])
        return Node(partition, Path("."), Path("."), "cpu", 1, policy.demands_of(partition), False)

    return node


def client_app(policy: NodePolicyConfig, updates: list[Update], weights: list[float]) -> ClientApp:
    """Nodes that reply with `updates[partition]` (weight `weights[partition]`) when asked
    to train, behind the real SecAgg+ mod judging the round by `policy`."""
    app = ClientApp(mods=[secure_aggregation_mod(node_of(policy))])

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        partition = int(context.node_config["partition-id"])
        update = {n: torch.from_numpy(u) for n, u in updates[partition].items()}
        received = {n: torch.zeros_like(u) for n, u in update.items()}
        reply = TrainReply(partition, 1, 10, 0.1).to_content()
        return Message(with_update(reply, update, received, weights[partition]), reply_to=msg)

    return app


@dataclass
class LocalGrid:
    """Flower's Grid, delivering each Message to its node's ClientApp in this process."""

    app: ClientApp
    contexts: dict[int, Context]
    lie: Callable[[Message], Message] = lambda m: m
    tamper: Callable[[Message], Message] = lambda m: m
    sent: list[Message] = field(default_factory=list)
    received: list[Message] = field(default_factory=list)
    crash: dict[int, str] = field(default_factory=dict)
    """Node id -> the stage in which it dies."""

    def send_and_receive(self, messages, timeout=None) -> list[Message]:
        replies = []
        for message in map(self.lie, messages):
            self.sent.append(message)
            node = message.metadata.dst_node_id
            try:
                if self.crash.get(node) == stage(message):
                    raise RuntimeError(f"this node died in the {stage(message)} stage")
                reply = self.app(message, self.contexts[node])
            except Exception as err:  # as Flower's runtime: the Message fails
                reply = Message(Error(0, str(err)), reply_to=message)
            replies.append(self.tamper(reply))
        self.received += replies
        return replies


def federation(
    updates: list[Update],
    weights: list[float] | None = None,
    policy: NodePolicyConfig | None = None,
) -> LocalGrid:
    """One node per update (node ids 101, 102, ...; partition ids 0, 1, ...)."""
    contexts = {
        101 + i: Context(1, 101 + i, {"partition-id": i}, RecordDict(), {})
        for i in range(len(updates))
    }
    app = client_app(policy or accepting_all(), updates, weights or [1.0] * len(updates))
    return LocalGrid(app, contexts)


def secure_round(grid: LocalGrid, cfg: SecureAggregationConfig, shapes) -> SecureSum:
    """The coordinator's side of one secure round over `grid`."""
    train = [
        Message(RecordDict(), dst_node_id=n, message_type=MessageType.TRAIN) for n in grid.contexts
    ]
    return SecAggPlus(cfg, timeout=60).run(grid, train, [], shapes)


def stage(message: Message) -> str | None:
    """The SecAgg+ stage a Message (or its reply) belongs to (None: a refusal or an error)."""
    if message.has_error() or CONFIGS not in message.content.config_records:
        return None
    return str(message.content.config_records[CONFIGS][Key.STAGE])


def as_coordinator(monkeypatch) -> None:
    """Give this process the task identity a running ServerApp has (Messages need it)."""
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


def stage_message(stage_name: str, config: dict, node: int = 101) -> Message:
    """A stage's Message as a coordinator sends it."""
    from flwr.app import ConfigRecord

    content = RecordDict({CONFIGS: ConfigRecord({Key.STAGE: stage_name, **config})})
    return Message(content, dst_node_id=node, message_type=MessageType.TRAIN)
