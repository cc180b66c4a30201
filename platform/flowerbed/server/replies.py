"""What the clients' replies to a round's Messages say, each decoded once: who trained,
who failed and why, and the held-out losses they brought (on a train reply or an
evaluate reply)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from flwr.app import Message, MessageType

from flowerbed.protocol import EvaluateReply, TrainReply

log = logging.getLogger("flowerbed")


class FederationError(RuntimeError):
    """A round could not complete; the message says which round and why."""


class NothingToTrain(FederationError):
    """Every client's privacy budget was spent before round 1: the settings are infeasible."""


@dataclass(frozen=True)
class RoundReplies:
    """A round's replies, each decoded once."""

    trained: list[TrainReply]
    """Every successful reply to a train Message (refusals and budget-spent ones too)."""
    failures: list[str]
    """Each failed train Message's node and reason."""
    heldout: list[EvaluateReply]
    """The held-out losses the replies brought, on a train reply or an evaluate reply (a
    client that refused, or whose policy withholds its losses, brings none)."""

    @classmethod
    def read(cls, replies: list[Message]) -> RoundReplies:
        trained, failures, heldout = [], [], []
        for message in replies:
            is_train = message.metadata.message_type == MessageType.TRAIN
            if message.has_error():
                if is_train:
                    node = message.metadata.src_node_id
                    failures.append(f"node {node}: {short_reason(message.error.reason)}")
                continue
            if is_train:
                trained.append(reply := TrainReply.from_content(message.content))
                evaluated = reply.heldout
            else:
                evaluated = EvaluateReply.from_content(message.content)
            if evaluated is not None and evaluated.heldout_loss is not None:
                heldout.append(evaluated)
        return cls(trained, failures, heldout)

    def successful(self, round_: int, min_clients: int) -> tuple[list[TrainReply], dict[str, str]]:
        """The successful train replies, and each refusing client's sentence (by partition
        id); fewer successes than `min_clients` stops the run, naming every failure and
        refusal."""
        refused = {str(r.partition_id): r.refused for r in self.trained if r.refused}
        answered = [r for r in self.trained if not r.refused]
        for failure in self.failures:
            log.warning("round %d: a client failed and was left out: %s", round_, failure)
        for sentence in refused.values():
            log.warning("round %d: %s", round_, sentence)
        if len(answered) < min_clients:
            raise FederationError(
                f"round {round_}: {len(answered)} client(s) replied successfully, fewer than "
                f"federation.min_clients={min_clients}; "
                f"failures: {'; '.join([*self.failures, *refused.values()]) or 'none'}"
            )
        return answered, refused


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
