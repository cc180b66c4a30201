"""Which replies count: every trained reply checked before anything is combined.

A reply is admitted when its tensors have the names, shapes and dtypes of the weights the
server sent, every value is finite, and (when `federation.max_update_norm` is set) its
update, the reply minus the global weights, is no longer than that norm (or is scaled to
it, `update_norm_policy=clip`). Its aggregation weight is what it claims, capped at
`federation.max_examples_per_client`. A reply left out gets one sentence naming the
client and the reason; it counts as that client's failure for the round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord

from flowerbed.config import FederationConfig
from flowerbed.model.transport import read_only
from flowerbed.protocol import TrainReply

Weights = dict[str, torch.Tensor]


@dataclass
class ClientUpdate:
    """An admitted reply: its tensors (read in place, or fp32 once clipped) and its weight."""

    reply: TrainReply
    tensors: Weights
    weight: float

    @property
    def partition_id(self) -> int:
        return self.reply.partition_id


class Rejected(ValueError):
    """A reply that does not count; the message is the sentence the records keep."""


class Admission:
    """The checks every trained reply passes before it is combined."""

    def __init__(self, cfg: FederationConfig) -> None:
        self.cfg = cfg

    def admit(
        self, replies: list[TrainReply], sent: ArrayRecord, current: Weights
    ) -> tuple[list[ClientUpdate], dict[str, str]]:
        """The admitted updates (in partition order) and each rejected client's sentence."""
        admitted, rejected = [], {}
        for reply in sorted(replies, key=lambda r: r.partition_id):
            try:
                admitted.append(self._check(reply, sent, current))
            except Rejected as why:
                rejected[str(reply.partition_id)] = str(why)
        return admitted, rejected

    def _check(self, reply: TrainReply, sent: ArrayRecord, current: Weights) -> ClientUpdate:
        who = f"client {reply.partition_id}'s reply is left out:"
        _same_structure(who, reply.weights, sent)
        try:
            tensors = read_only(reply.weights, self.cfg.transport_dtype)
        except (ValueError, TypeError) as err:
            raise Rejected(f"{who} its weights cannot be read ({err})") from None
        for name, tensor in tensors.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise Rejected(f"{who} its weights hold NaN or infinite values (in {name})")
        weight = float(reply.num_examples)
        if not math.isfinite(weight) or weight <= 0:
            raise Rejected(f"{who} it claims an aggregation weight of {reply.num_examples}")
        cap = self.cfg.max_examples_per_client
        weight = min(weight, cap) if cap else weight
        return ClientUpdate(reply, self._bounded(who, tensors, current), weight)

    def _bounded(self, who: str, tensors: Weights, current: Weights) -> Weights:
        """The tensors, or their update scaled to `max_update_norm` (policy clip)."""
        limit = self.cfg.max_update_norm
        if limit is None:
            return tensors
        norm = update_norm(tensors, current)
        if norm <= limit:
            return tensors
        if self.cfg.update_norm_policy == "reject":
            raise Rejected(
                f"{who} its update's norm {norm:.4g} is above federation.max_update_norm="
                f"{limit:g} (update_norm_policy=reject)"
            )
        scale = limit / norm
        return {
            name: (current[name] + scale * (t.float() - current[name]))
            if t.is_floating_point()
            else t
            for name, t in tensors.items()
        }

    def bounded_sum(self, update: Weights, current: Weights) -> Weights:
        """Secure aggregation: the one check left, on the survivors' mean update (finite,
        within `max_update_norm`); the new weights before the outer step."""
        who = "the secure sum of the round's updates is left out:"
        for name, step in update.items():
            if not bool(torch.isfinite(step).all()):
                raise Rejected(f"{who} it holds NaN or infinite values (in {name})")
        combined = {**current, **{n: current[n] + step for n, step in update.items()}}
        return self._bounded(who, combined, current)


def update_norm(tensors: Weights, current: Weights) -> float:
    """The L2 norm of `tensors - current` over every floating-point tensor, in fp64."""
    total = 0.0
    for name, tensor in tensors.items():
        if tensor.is_floating_point():
            total += float((tensor.float() - current[name]).double().pow(2).sum())
    return math.sqrt(total)


def _same_structure(who: str, record: ArrayRecord, sent: ArrayRecord) -> None:
    """Tensor names, shapes and dtypes as the server sent them (the transport's)."""
    missing, extra = sorted(set(sent) - set(record)), sorted(set(record) - set(sent))
    if missing or extra:
        what = f"lacks {', '.join(missing[:3])}" if missing else f"adds {', '.join(extra[:3])}"
        raise Rejected(f"{who} its weights do not match the model's tensors (it {what})")
    for name, array in record.items():
        expected = sent[name]
        if list(array.shape) != list(expected.shape) or array.dtype != expected.dtype:
            raise Rejected(
                f"{who} tensor {name} is {array.dtype}{list(array.shape)} where the model's "
                f"is {expected.dtype}{list(expected.shape)}"
            )
