"""One federated round after another, as the ServerApp runs it.

A round: send the global weights to the sampled clients, apply the failure and budget
policies to their replies, aggregate, collect the clients' held-out losses, evaluate on
the validation split, and return a `RoundRecord`. Everything that only records (files,
log lines, checkpoints, plots, W&B) is a callback; see `server.callbacks`.
"""

from __future__ import annotations

import logging
import math
import random
import re
import time

import torch
from flwr.app import Message
from flwr.serverapp import Grid
from flwr.serverapp.exception import PrivacyBudgetExhausted

from flowerbed.config import FlowerbedConfig
from flowerbed.continual.matrix import continual_metrics, loss_matrix, merge_client_losses
from flowerbed.data.blocks import Blocks
from flowerbed.model.adapter import load_shared_state, shared_state
from flowerbed.model.runtime import mean_loss
from flowerbed.model.transport import read_only, record_nbytes, to_array_record
from flowerbed.protocol import EvaluateReply, ModelSpec, TrainReply
from flowerbed.server.instructions import evaluate_instructions, train_instructions
from flowerbed.server.outer import FedAvgOuter
from flowerbed.server.records import RoundRecord
from flowerbed.server.strategy import TorchFedAvg, make_strategy

log = logging.getLogger("flowerbed")


class FederationError(RuntimeError):
    """A round could not complete; the message says which round and why."""


class NothingToTrain(FederationError):
    """Every client's privacy budget was spent before round 1: the settings are infeasible."""


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
        self.strategy = make_strategy(cfg)
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

    def run_round(self, round_: int, history: list[RoundRecord]) -> RoundRecord | None:
        """One round; None when no sampled client may train (every budget is spent)."""
        fed = self.cfg.federation
        started = time.perf_counter()
        random.seed(f"{self.cfg.seed}-{round_}")  # Flower samples clients with `random`
        arrays = to_array_record(shared_state(self.model), fed.transport_dtype)
        instructions = train_instructions(self.cfg, self.spec, round_).to_record()
        try:
            messages = list(self.strategy.configure_train(round_, arrays, instructions, self.grid))
        except PrivacyBudgetExhausted as err:
            return self._stop(
                round_, f"the user-level budget (privacy.max_epsilon) is spent: {err}"
            )
        replies = list(self.grid.send_and_receive(messages, timeout=fed.round_timeout))
        answered = self._answered(round_, replies)
        exhausted = self._note_privacy(round_, answered)
        if len(exhausted) == len(answered):
            return self._stop(round_, "no sampled client may train any more")
        trained = sorted(
            (r for r in answered if r.weights is not None), key=lambda r: r.partition_id
        )
        average = self._aggregate(round_, replies)
        load_shared_state(self.model, self.outer.step(shared_state(self.model), average))
        evaluated = self._federated_evaluate(round_)
        val_loss = self.val_loss()
        seconds = time.perf_counter() - started
        tokens = sum(r.tokens for r in trained)
        record = RoundRecord(
            round=round_,
            train_loss=_weighted_mean([(r.train_loss, r.num_examples) for r in trained]),
            val_loss=val_loss,
            val_perplexity=math.exp(min(val_loss, 50.0)),
            heldout_loss=_weighted_mean([(r.heldout_loss, r.num_examples) for r in evaluated])
            if evaluated
            else None,
            tokens=tokens,
            tokens_per_s=tokens / seconds,
            client_train_seconds=max(r.train_seconds for r in trained),
            seconds=seconds,
            clients=len(answered) - len(exhausted),
            failed_clients=len(replies) - len(answered),
            budget_exhausted_clients=len(exhausted),
            bytes_per_client=record_nbytes(arrays),
            client_epsilon=dict(self.client_epsilon) or None,
            epsilon_max=max(self.client_epsilon.values()) if self.client_epsilon else None,
            user_level_epsilon=self._user_level_epsilon(),
        )
        if evaluated and self.cfg.continual.enabled:
            self._add_continual(record, evaluated, history)
        return record

    def _aggregate(self, round_: int, replies: list[Message]) -> dict[str, torch.Tensor]:
        """TorchFedAvg's fp32 average as it is (no encoding to decode again), or another
        strategy's aggregate read in place; the outer step reads it, the load copies it."""
        if isinstance(self.strategy, TorchFedAvg):
            average = self.strategy.average(replies)
        else:
            aggregated, _ = self.strategy.aggregate_train(round_, replies)
            average = None if aggregated is None else read_only(aggregated, "fp32")
        if average is None:
            raise FederationError(f"round {round_}: the strategy aggregated nothing (see the log)")
        return average

    def _answered(self, round_: int, replies: list[Message]) -> list[TrainReply]:
        """The successful replies; fewer than `federation.min_clients` stops the run."""
        failures = [
            f"node {m.metadata.src_node_id}: {short_reason(m.error.reason)}"
            for m in replies
            if m.has_error()
        ]
        answered = [TrainReply.from_content(m.content) for m in replies if not m.has_error()]
        if len(answered) < self.cfg.federation.min_clients:
            raise FederationError(
                f"round {round_}: {len(answered)} client(s) replied successfully, fewer than "
                f"federation.min_clients={self.cfg.federation.min_clients}; "
                f"failures: {'; '.join(failures) or 'none'}"
            )
        for failure in failures:
            log.warning("round %d: a client failed and was left out: %s", round_, failure)
        return answered

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
        log.warning("round %d: %s; the run ends after round %d", round_, why, round_ - 1)
        self.stop_reason = "privacy budget spent"
        return None

    def _federated_evaluate(self, round_: int) -> list[EvaluateReply]:
        """Clients' held-out losses of the new global model."""
        cfg = self.cfg
        if cfg.federation.fraction_evaluate == 0:
            return []
        arrays = to_array_record(shared_state(self.model), cfg.federation.transport_dtype)
        instructions = evaluate_instructions(cfg, self.spec, round_).to_record()
        messages = list(self.strategy.configure_evaluate(round_, arrays, instructions, self.grid))
        replies = self.grid.send_and_receive(messages, timeout=cfg.federation.round_timeout)
        return [EvaluateReply.from_content(m.content) for m in replies if not m.has_error()]

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

    def _user_level_epsilon(self) -> float | None:
        spent = self.strategy.privacy_spent() if hasattr(self.strategy, "privacy_spent") else None
        return float(spent.epsilon) if spent is not None else None


def _weighted_mean(pairs: list[tuple[float, float]]) -> float:
    total = sum(float(w) for _, w in pairs)
    return sum(float(w) * float(x) for x, w in pairs) / total


def short_reason(reason: str) -> str:
    """The client's own exception message out of the traceback Flower wraps around it."""
    messages = re.findall(r"Message: (.+)", reason)
    if messages:
        return messages[-1].strip().rstrip("'>")
    lines = [line for line in reason.splitlines() if line.strip()]
    return lines[-1].strip() if lines else reason
