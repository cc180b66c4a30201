"""One federated round after another, as the ServerApp runs it.

A round is one Message per sampled client: `exchange` sends the global weights to the
clients sampled for training (and, on those sampled for evaluation, asks for the held-out
losses of the weights sent, which are the previous round's model); `conclude` applies
the failure and budget policies to the replies, aggregates, evaluates on the validation
split and returns the round's `RoundRecord`, whose held-out losses the next round's
replies bring (`complete`), or for the last round an evaluate-only Message
(`final_heldout`). Everything that only records (files, log lines, checkpoints, plots,
W&B) is a callback; see `server.callbacks`.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, Message, MessageType
from flwr.serverapp import Grid

from flowerbed.config import FlowerbedConfig
from flowerbed.continual.matrix import continual_metrics, loss_matrix, merge_client_losses
from flowerbed.data.blocks import Blocks
from flowerbed.model.adapter import load_shared_state, shared_state
from flowerbed.model.runtime import mean_loss
from flowerbed.model.transport import record_nbytes, to_array_record
from flowerbed.protocol import EvaluateReply, ModelSpec, TrainReply, ask_heldout
from flowerbed.server.instructions import evaluate_instructions, train_instructions
from flowerbed.server.outer import FedAvgOuter
from flowerbed.server.pipeline import AggregationPipeline
from flowerbed.server.records import RoundRecord
from flowerbed.server.replies import (
    FederationError,
    RoundReplies,
    outside_guarantee,
    weighted_mean,
)
from flowerbed.server.sampling import client_sampler
from flowerbed.server.secure_aggregation import SecureSum, float_shapes, secure_aggregation

log = logging.getLogger("flowerbed")


@dataclass(frozen=True)
class Exchange:
    """What one round's Messages brought back."""

    round: int
    started: float
    """perf_counter when the round began."""
    arrays: ArrayRecord
    """The global weights sent to each client."""
    replies: RoundReplies
    """Every reply, decoded once (with the held-out losses of the weights sent, from the
    clients sampled for evaluation)."""
    secure: SecureSum | None = None
    """Secure aggregation: the survivors' mean update, the only update the server sees."""


class RoundEngine:
    """Holds the global model and runs rounds against a Flower Grid."""

    def __init__(
        self,
        grid: Grid,
        cfg: FlowerbedConfig,
        model: torch.nn.Module,
        spec: ModelSpec,
        outer: FedAvgOuter,
        validation: Blocks,
        device: torch.device,
        client_epsilon: dict[str, float],
    ) -> None:
        self.grid, self.cfg, self.model, self.outer = grid, cfg, model, outer
        self.spec = spec
        self.validation, self.device = validation, device
        self.sampler = client_sampler(cfg.federation)
        self.pipeline = AggregationPipeline(cfg, outer)
        self.secure = secure_aggregation(cfg)
        """SecAgg+ (None: replies come in the clear)."""
        self.client_epsilon = client_epsilon
        """Each client's lifetime epsilon, as it last reported it (the federation's view)."""
        self.stop_reason = "all rounds done"

    def val_loss(self) -> float:
        """The global model's loss on the server's validation split."""
        train = self.cfg.train
        self.model.to(self.device)
        loss = mean_loss(
            self.model, self.validation, train.batch_size, train.eval_batches, self.device
        )
        self.model.cpu()
        return loss

    @property
    def evaluates(self) -> bool:
        """Whether clients report held-out losses (`federation.fraction_evaluate` > 0)."""
        return self.cfg.federation.fraction_evaluate > 0

    def exchange(self, round_: int, heldout_of: int | None) -> Exchange | None:
        """Round `round_`'s Messages and replies; None when the user-level budget is spent.

        `heldout_of`: the round whose model the clients receive and whose record still
        lacks held-out losses (None: no record waits).
        """
        fed = self.cfg.federation
        started = time.perf_counter()
        random.seed(f"{self.cfg.seed}-{round_}")  # Flower samples clients with `random`
        arrays = to_array_record(shared_state(self.model), fed.transport_dtype)
        instructions = train_instructions(self.cfg, self.spec, round_).to_record()
        if self.pipeline.budget_spent():
            return self._stop(round_, "the user-level budget (privacy.max_epsilon) is spent")
        messages = list(self.sampler.configure_train(round_, arrays, instructions, self.grid))
        if heldout_of is not None and self.evaluates:
            messages = self._ask_heldout(heldout_of, arrays, messages)
        if self.secure is None:
            replies = list(self.grid.send_and_receive(messages, timeout=fed.round_timeout))
            return Exchange(round_, started, arrays, RoundReplies.read(replies))
        train = [m for m in messages if m.metadata.message_type == MessageType.TRAIN]
        others = [m for m in messages if m.metadata.message_type != MessageType.TRAIN]
        shapes = float_shapes(shared_state(self.model))
        secure = self.secure.run(self.grid, train, others, shapes)
        return Exchange(round_, started, arrays, RoundReplies.read(secure.replies), secure)

    def conclude(self, exchange: Exchange) -> RoundRecord | None:
        """Aggregate the round's updates and evaluate on the validation split; None when no
        sampled client may train (every budget is spent). Held-out losses come later."""
        round_, replies = exchange.round, exchange.replies
        min_clients = self.cfg.federation.min_clients
        answered, refused = replies.successful(round_, min_clients)
        exhausted = self._note_privacy(round_, answered)
        if len(exhausted) == len(answered):
            return self._stop(round_, "no sampled client may train any more")
        current = shared_state(self.model)
        trained = [r for r in answered if r.weights is not None]
        if exchange.secure is None:
            result = self.pipeline.aggregate(round_, trained, exchange.arrays, current)
        else:
            result = self.pipeline.aggregate_sum(round_, exchange.secure, answered, current)
        for sentence in result.rejected.values():
            log.warning("round %d: %s", round_, sentence)
        if len(result.admitted) < min_clients or result.weights is None:
            raise FederationError(
                f"round {round_}: {len(result.admitted)} client update(s) admitted, fewer "
                f"than federation.min_clients={min_clients}; the run stops, keeping the last "
                f"finite model: {'; '.join(result.rejected.values()) or 'no reply trained'}"
            )
        load_shared_state(self.model, result.weights)
        val_loss = self.val_loss()
        seconds = time.perf_counter() - exchange.started
        admitted = result.admitted
        tokens = sum(u.reply.tokens for u in admitted)
        norms = {str(u.partition_id): u.norm for u in admitted if u.norm is not None}
        return RoundRecord(
            round=round_,
            train_loss=weighted_mean([(u.reply.train_loss, u.weight) for u in admitted]),
            val_loss=val_loss,
            val_perplexity=math.exp(min(val_loss, 50.0)),
            heldout_loss=None,
            tokens=tokens,
            tokens_per_s=tokens / seconds,
            client_train_seconds=max(u.reply.train_seconds for u in admitted),
            seconds=seconds,
            clients=len(admitted),
            failed_clients=len(replies.failures),
            budget_exhausted_clients=len(exhausted),
            bytes_per_client=record_nbytes(exchange.arrays),
            client_epsilon=dict(self.client_epsilon) or None,
            epsilon_max=max(self.client_epsilon.values()) if self.client_epsilon else None,
            user_level_epsilon=self.pipeline.user_level_epsilon(),
            refused_clients=refused or None,
            rejected_clients=result.rejected or None,
            update_norms=norms or None,
            outside_guarantee=outside_guarantee(answered),
            masked_bytes_per_client=exchange.secure.masked_bytes if exchange.secure else None,
        )

    def complete(
        self, record: RoundRecord, heldout: list[EvaluateReply], history: list[RoundRecord]
    ) -> None:
        """Add the clients' held-out losses of the round's model (none: left None)."""
        if not heldout:
            return
        record.heldout_loss = weighted_mean([(r.heldout_loss, r.num_examples) for r in heldout])
        record.outside_guarantee = outside_guarantee(heldout, record.outside_guarantee)
        if self.cfg.continual.enabled:
            self._add_continual(record, heldout, history)

    def final_heldout(self, round_: int) -> list[EvaluateReply]:
        """The held-out losses of the global model as it is, after round `round_`: the one
        evaluate-only Message of the run, to the clients sampled for evaluation."""
        if not self.evaluates:
            return []
        random.seed(f"{self.cfg.seed}-final")
        arrays = to_array_record(shared_state(self.model), self.cfg.federation.transport_dtype)
        messages = self._evaluate_messages(round_, arrays)
        replies = self.grid.send_and_receive(messages, timeout=self.cfg.federation.round_timeout)
        return RoundReplies.read(list(replies)).heldout

    def _ask_heldout(self, round_: int, arrays: ArrayRecord, train: list[Message]) -> list[Message]:
        """The train Messages, those to nodes sampled for evaluation asking also for the
        held-out losses of round `round_`'s model; an evaluate Message to any other."""
        evaluate = {m.metadata.dst_node_id: m for m in self._evaluate_messages(round_, arrays)}
        messages = []
        for message in train:
            asked = evaluate.pop(message.metadata.dst_node_id, None) is not None
            messages.append(ask_heldout(message) if asked else message)
        return messages + list(evaluate.values())

    def _evaluate_messages(self, round_: int, arrays: ArrayRecord) -> list[Message]:
        instructions = evaluate_instructions(self.cfg, self.spec, round_).to_record()
        return list(self.sampler.configure_evaluate(round_, arrays, instructions, self.grid))

    def _note_privacy(self, round_: int, answered: list[TrainReply]) -> list[int]:
        """Update the federation's view of each client's epsilon; return who declined."""
        for reply in answered:
            if reply.epsilon is not None:
                self.client_epsilon[str(reply.partition_id)] = reply.epsilon
        exhausted = [r.partition_id for r in answered if r.budget_exhausted]
        if exhausted:
            log.warning(
                "round %d: client(s) %s have spent their privacy budget and did not train",
                round_,
                exhausted,
            )
        return exhausted

    def _stop(self, round_: int, why: str) -> None:
        """Log why the run ends before round `round_`; the caller returns None."""
        log.warning("round %d: %s; the run ends after round %d", round_, why, round_ - 1)
        self.stop_reason = "privacy budget spent"
        return None

    def _add_continual(
        self, record: RoundRecord, evaluated: list[EvaluateReply], history: list[RoundRecord]
    ) -> None:
        """The per-experience losses, and the loss matrix with forgetting so far."""
        experience, losses = merge_client_losses(
            [(r.experience_losses, r.experience_sizes) for r in evaluated]
        )
        record.experience = experience
        record.experience_loss = {str(j): loss for j, loss in losses.items()}
        rows = [(r.experience, r.experience_loss) for r in [*history, record] if r.experience_loss]
        record.continual = continual_metrics(loss_matrix(rows)).as_dict()
