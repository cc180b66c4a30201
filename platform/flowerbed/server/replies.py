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


def successful_replies(
    round_: int, replies: list[Message], min_clients: int
) -> tuple[list[TrainReply], dict[str, str]]:
    """The successful train replies, and each refusing client's sentence (by partition id);
    fewer successes than `min_clients` stops the run, naming every failure and refusal."""
    failures = [
        f"node {m.metadata.src_node_id}: {short_reason(m.error.reason)}"
        for m in replies
        if m.has_error()
    ]
    decoded = [TrainReply.from_content(m.content) for m in replies if not m.has_error()]
    refused = {str(r.partition_id): r.refused for r in decoded if r.refused}
    answered = [r for r in decoded if not r.refused]
    for failure in failures:
        log.warning("round %d: a client failed and was left out: %s", round_, failure)
    for sentence in refused.values():
        log.warning("round %d: %s", round_, sentence)
    if len(answered) < min_clients:
        raise FederationError(
            f"round {round_}: {len(answered)} client(s) replied successfully, fewer than "
            f"federation.min_clients={min_clients}; "
            f"failures: {'; '.join([*failures, *refused.values()]) or 'none'}"
        )
    return answered, refused


def train_replies(replies: list[Message]) -> list[Message]:
    """The replies to train Messages, failed ones included (evaluate replies left out)."""
    return [m for m in replies if m.metadata.message_type == MessageType.TRAIN]


def heldout_replies(replies: list[Message]) -> list[EvaluateReply]:
    """The held-out losses in a round's successful replies, of either type (a client that
    refused, or whose policy withholds its losses, brings none)."""
    heldout = []
    for message in replies:
        if message.has_error():
            continue
        if message.metadata.message_type == MessageType.EVALUATE:
            heldout.append(EvaluateReply.from_content(message.content))
        elif (reply := TrainReply.from_content(message.content)).heldout is not None:
            heldout.append(reply.heldout)
    return [r for r in heldout if r.heldout_loss is not None]


def short_reason(reason: str) -> str:
    """The client's own exception message out of the traceback Flower wraps around it."""
    messages = re.findall(r"Message: (.+)", reason)
    if messages:
        return messages[-1].strip().rstrip("'>")
    lines = [line for line in reason.splitlines() if line.strip()]
    return lines[-1].strip() if lines else reason


def weighted_mean(pairs: list[tuple[float | None, float]]) -> float | None:
    """The weighted mean of the values reported (None: no client reported one)."""
    pairs = [(x, w) for x, w in pairs if x is not None]
    total = sum(float(w) for _, w in pairs)
    return sum(float(w) * float(x) for x, w in pairs) / total if pairs else None


def outside_guarantee(
    replies: list[TrainReply] | list[EvaluateReply], before: list[int] | None = None
) -> list[int] | None:
    """The clients whose exact metrics left them outside the DP guarantee (None: none)."""
    clients = {*(before or []), *(r.partition_id for r in replies if r.outside_guarantee)}
    return sorted(clients) or None
