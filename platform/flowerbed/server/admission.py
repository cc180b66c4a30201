"""Which replies count: every trained reply checked before anything is combined.

A reply is admitted when its tensors have the names, shapes and dtypes of the weights the
server sent, every value is finite, and its update, the reply minus the global weights, is
no longer than the round's bound (`federation.max_update_norm`, `auto` by default; or
scaled to it, `update_norm_policy=clip`). Its aggregation weight is 1 under DP, else what
it claims, capped (`federation.max_examples_per_client`); `server/bounds.py` says how both
bounds are set. A reply left out gets one sentence naming the client and the reason; it
counts as that client's failure for the round.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord

from flowerbed.config import FederationConfig
from flowerbed.model.transport import read_only
from flowerbed.protocol import TrainReply
from flowerbed.server.bounds import NormBound, weights

Weights = dict[str, torch.Tensor]
log = logging.getLogger("flowerbed")


@dataclass
class ClientUpdate:
    """An admitted reply: its tensors (read in place, or fp32 once clipped) and its weight."""

    reply: TrainReply
    tensors: Weights
    weight: float
    norm: float | None = None
    """Its update's L2 norm as it arrived (None: not measured, no norm bound is set)."""

    @property
    def partition_id(self) -> int:
        return self.reply.partition_id


class Rejected(ValueError):
    """A reply that does not count; the message is the sentence the records keep."""


class Admission:
    """The checks every trained reply passes before it is combined."""

    def __init__(self, cfg: FederationConfig, equal_weights: bool) -> None:
        self.cfg = cfg
        self.equal_weights = equal_weights
        """Every admitted reply weighs 1, whatever it claims (under DP)."""

    def admit(
        self, replies: list[TrainReply], sent: ArrayRecord, current: Weights
    ) -> tuple[list[ClientUpdate], dict[str, str]]:
        """The admitted updates (in partition order) and each rejected client's sentence."""
        readable, rejected = [], {}
        for reply in sorted(replies, key=lambda r: r.partition_id):
            try:
                readable.append((reply, self._read(reply, sent)))
            except Rejected as why:
                rejected[str(reply.partition_id)] = str(why)
        measured = self.cfg.max_update_norm is not None
        norms = [update_norm(tensors, current) if measured else None for _, tensors in readable]
        bound = NormBound.of(self.cfg, [n for n in norms if n is not None])
        kept = []
        for (reply, tensors), norm in zip(readable, norms, strict=True):
            try:
                kept.append(
                    (reply, self._bounded(_who(reply), tensors, current, norm, bound), norm)
                )
            except Rejected as why:
                rejected[str(reply.partition_id)] = str(why)
        counted = self._weights([reply for reply, _, _ in kept])  # among the updates kept
        admitted = [
            ClientUpdate(reply, tensors, weight, norm)
            for (reply, tensors, norm), weight in zip(kept, counted, strict=True)
        ]
        return admitted, rejected

    def _read(self, reply: TrainReply, sent: ArrayRecord) -> Weights:
        """The reply's tensors, when they are the model's, finite, and its claim positive."""
        who = _who(reply)
        _same_structure(who, reply.weights, sent)
        try:
            tensors = read_only(reply.weights, self.cfg.transport_dtype)
        except (ValueError, TypeError) as err:
            raise Rejected(f"{who} its weights cannot be read ({err})") from None
        for name, tensor in tensors.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise Rejected(f"{who} its weights hold NaN or infinite values (in {name})")
        claim = float(reply.num_examples)
        if not math.isfinite(claim) or claim <= 0:
            raise Rejected(f"{who} it claims an aggregation weight of {reply.num_examples}")
        return tensors

    def _weights(self, replies: list[TrainReply]) -> list[float]:
        """What each reply weighs; a claim the cap cuts is logged."""
        claims = [float(reply.num_examples) for reply in replies]
        counted = weights(self.cfg, self.equal_weights, claims)
        for reply, claim, weight in zip(replies, claims, counted, strict=True):
            if not self.equal_weights and weight < claim:
                log.warning(
                    "client %d claims an aggregation weight of %g; it counts as %g "
                    "(federation.max_examples_per_client=%s)",
                    reply.partition_id,
                    claim,
                    weight,
                    self.cfg.max_examples_per_client,
                )
        return counted

    def _bounded(
        self, who: str, tensors: Weights, current: Weights, norm: float | None, bound: NormBound
    ) -> Weights:
        """The tensors, or their update scaled to the round's norm limit (policy clip)."""
        limit = bound.limit
        if limit is None or norm is None or norm <= limit:
            return tensors
        if self.cfg.update_norm_policy == "reject":
            raise Rejected(
                f"{who} its update's norm {norm:.4g} is above {bound.rule} "
                "(update_norm_policy=reject)"
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
        within a number `max_update_norm`; `auto` has no individual norms to derive a
        bound from); the new weights before the outer step."""
        who = "the secure sum of the round's updates is left out:"
        for name, step in update.items():
            if not bool(torch.isfinite(step).all()):
                raise Rejected(f"{who} it holds NaN or infinite values (in {name})")
        combined = {**current, **{n: current[n] + step for n, step in update.items()}}
        bound = NormBound.of(self.cfg, [])
        norm = update_norm(combined, current) if bound.limit is not None else None
        return self._bounded(who, combined, current, norm, bound)


def _who(reply: TrainReply) -> str:
    return f"client {reply.partition_id}'s reply is left out:"


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
