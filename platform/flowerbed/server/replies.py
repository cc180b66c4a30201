"""What the clients' replies to a round's Messages say: who trained, who failed and why,
and the held-out losses they brought (on a train reply or an evaluate reply)."""

from __future__ import annotations

import logging
import re

from flwr.app import Message, MessageType

from flowerbed.protocol import EvaluateReply, TrainReply

log = logging.getLogger("flowerbed")


class FederationError(RuntimeError):
    """A round could not complete; the message says which round and why."""


class NothingToTrain(FederationError):
    """Every client's privacy budget was spent before round 1: the settings are infeasible."""


def successful_replies(round_: int, replies: list[Message], min_clients: int) -> list[TrainReply]:
    """The successful train replies; fewer than `min_clients` stops the run."""
    failures = [
        f"node {m.metadata.src_node_id}: {short_reason(m.error.reason)}"
        for m in replies
        if m.has_error()
    ]
    answered = [TrainReply.from_content(m.content) for m in replies if not m.has_error()]
    if len(answered) < min_clients:
        raise FederationError(
            f"round {round_}: {len(answered)} client(s) replied successfully, fewer than "
            f"federation.min_clients={min_clients}; "
            f"failures: {'; '.join(failures) or 'none'}"
        )
    for failure in failures:
        log.warning("round %d: a client failed and was left out: %s", round_, failure)
    return answered


def train_replies(replies: list[Message]) -> list[Message]:
    """The replies to train Messages, failed ones included (evaluate replies left out)."""
    return [m for m in replies if m.metadata.message_type == MessageType.TRAIN]


def heldout_replies(replies: list[Message]) -> list[EvaluateReply]:
    """The held-out losses in a round's successful replies, of either type."""
    heldout = []
    for message in replies:
        if message.has_error():
            continue
        if message.metadata.message_type == MessageType.EVALUATE:
            heldout.append(EvaluateReply.from_content(message.content))
        elif (reply := TrainReply.from_content(message.content)).heldout is not None:
            heldout.append(reply.heldout)
    return heldout


def short_reason(reason: str) -> str:
    """The client's own exception message out of the traceback Flower wraps around it."""
    messages = re.findall(r"Message: (.+)", reason)
    if messages:
        return messages[-1].strip().rstrip("'>")
    lines = [line for line in reason.splitlines() if line.strip()]
    return lines[-1].strip() if lines else reason
