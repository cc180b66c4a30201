"""The Flower ClientApp: translate Messages to tensors and back, around `local_round`.

Every Message is handled from scratch (model built, weights loaded, shard memory-mapped):
in deployment each Message runs in a fresh process, and simulation behaves the same.
What must outlive a Message (the privacy ledger, the continual state and replay buffer)
lives in the node's state directory; where that is, the node's config says.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from flowerbed.client.faults import crash_if_asked, misbehave, misbehaves
from flowerbed.client.local_round import evaluate_round, train_round
from flowerbed.client.node import Node
from flowerbed.client.secure import is_secure, secure_aggregation_mod, with_update
from flowerbed.model.transport import from_array_record, to_array_record
from flowerbed.protocol import (
    EvaluateInstructions,
    EvaluateReply,
    TrainInstructions,
    TrainReply,
    global_weights,
)

log = logging.getLogger("flowerbed")


def make_client_app(node_of: Callable[[Context], Node]) -> ClientApp:
    """A ClientApp whose machine facts come from `node_of` (node config, or a simulation's)."""
    client_app = ClientApp(mods=[secure_aggregation_mod(node_of)])

    @client_app.train()
    def _train(msg: Message, context: Context) -> Message:
        node = node_of(context)
        try:
            job = TrainInstructions.from_content(msg.content)
        except (ValueError, KeyError, TypeError) as err:
            refused = unreadable(node.partition_id, "train", err)
            return _reply(
                msg, TrainReply(node.partition_id, 0, 0, 0.0, refused=refused).to_content()
            )
        # masked or not is what the Message is (client/secure.py), not what it claims
        secure = (job.secure_max_weight or 1.0) if is_secure(msg) else None
        job = dataclasses.replace(job, secure_max_weight=secure)
        weights = from_array_record(global_weights(msg.content), job.transport_dtype)
        crash_if_asked(node.faults, node.partition_id)
        reply, trained = train_round(job, weights, node)
        if trained is not None and misbehaves(node.faults, node.partition_id):
            reply, trained = misbehave(node.faults, reply, trained, weights, job.round)
        if secure is not None:  # the mod masks it: only the masked update leaves
            weight = min(reply.num_examples, secure)
            return _reply(msg, with_update(reply.to_content(), trained, weights, weight))
        if trained is not None:
            reply = dataclasses.replace(
                reply, weights=to_array_record(trained, job.transport_dtype)
            )
        return _reply(msg, reply.to_content())

    @client_app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        node = node_of(context)
        try:
            job = EvaluateInstructions.from_content(msg.content)
        except (ValueError, KeyError, TypeError) as err:
            refused = unreadable(node.partition_id, "evaluate", err)
            return _reply(msg, EvaluateReply(node.partition_id, 0, refused=refused).to_content())
        weights = from_array_record(global_weights(msg.content), job.transport_dtype)
        return _reply(msg, evaluate_round(job, weights, node).to_content())

    return client_app


def unreadable(partition_id: int, kind: str, err: Exception) -> str:
    """The refusal of instructions the client cannot read: a sentence, never a traceback."""
    refused = (
        f"client {partition_id} refuses the server's {kind} instructions, which it cannot "
        f"read: {err}"
    )
    log.warning("%s", refused)
    return refused


def _reply(msg: Message, content: RecordDict) -> Message:
    return Message(content, reply_to=msg)


app = make_client_app(Node.from_context)
"""The deployed ClientApp (`flowerbed.client.app:app`): a SuperNode's node config says
where its data and state are."""
