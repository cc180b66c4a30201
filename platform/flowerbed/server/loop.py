"""The federation, one round after another, as the ServerApp runs it.

Per round: send the global weights to the sampled clients, aggregate their replies,
collect held-out losses, evaluate on the validation split, record, checkpoint. The run
continues from the newest checkpoint in its directory, so `resume` needs nothing more.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import time
from pathlib import Path
from typing import Any

import torch
from flwr.app import ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.exception import PrivacyBudgetExhausted

from flowerbed.config import FlowerbedConfig, to_plain_dict
from flowerbed.continual.matrix import continual_metrics, loss_matrix, merge_client_losses
from flowerbed.data.blocks import Blocks
from flowerbed.model.factory import build_model, num_parameters
from flowerbed.model.runtime import mean_loss, resolve_device
from flowerbed.model.transport import from_array_record, record_nbytes, to_array_record
from flowerbed.server.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from flowerbed.server.strategy import make_strategy
from flowerbed.tracking import MetricsLog, RunLayout, write_json_atomic
from flowerbed.tracking.plots import plot_epsilon, plot_loss_matrix, plot_losses
from flowerbed.tracking.wandb_run import WandbRun

log = logging.getLogger("flowerbed")


class FederationError(RuntimeError):
    """A round could not complete; the message says which round and why."""


class Federation:
    """Holds the global model and runs rounds against a Flower Grid."""

    def __init__(self, grid: Grid, cfg: FlowerbedConfig, run_dir: Path) -> None:
        from transformers import AutoTokenizer

        self.grid, self.cfg, self.layout = grid, cfg, RunLayout(run_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(self.layout.tokenizer)
        self.validation = Blocks.load(self.layout.data, "validation")
        self.device = resolve_device(cfg.device)
        self.model = build_model(
            cfg.model, len(self.tokenizer), self.tokenizer.eos_token_id, cfg.seed
        )
        self.metrics = MetricsLog(self.layout.metrics)
        self.stop_reason = "all rounds done"
        self.client_epsilon: dict[str, float] = {}
        """Each client's lifetime epsilon, as it last reported it (the federation ledger)."""
        self.strategy = make_strategy(cfg)

    def run(self) -> dict[str, Any]:
        """Run (or continue) every round; return the summary also written to summary.json."""
        cfg = self.cfg
        start_round, records = self._restore()
        initial_val = self._initial_val_loss(start_round)
        tracker = WandbRun(cfg, self.layout.root, resume=start_round > 1)
        log.info(
            "model: %s parameters on %s; %d clients; rounds %d..%d",
            f"{num_parameters(self.model):,}",
            self.device,
            cfg.federation.num_clients,
            start_round,
            cfg.federation.rounds,
        )
        started = time.perf_counter()
        for round_ in range(start_round, cfg.federation.rounds + 1):
            record = self._round(round_)
            if record is None:
                break
            if record.get("experience_loss"):
                record["continual"] = continual_metrics(loss_matrix([*records, record])).as_dict()
            records.append(record)
            self.metrics.append(record)
            tracker.log(record)
            log.info(_progress_line(record, cfg.federation.rounds))
            save_checkpoint(
                self.layout.checkpoints, round_, self.model, cfg.tracking.keep_checkpoints
            )
        summary = self._finish(records, initial_val, time.perf_counter() - started)
        tracker.finish(summary)
        return summary

    def _restore(self) -> tuple[int, list[dict[str, Any]]]:
        checkpoint = latest_checkpoint(self.layout.checkpoints)
        if checkpoint is None:
            self.metrics.truncate_after(0)
            return 1, []
        done = load_checkpoint(checkpoint, self.model)
        log.info("resuming after round %d from %s", done, checkpoint)
        records = self.metrics.truncate_after(done)
        if records and records[-1].get("client_epsilon"):
            self.client_epsilon = dict(records[-1]["client_epsilon"])
        return done + 1, records

    def _initial_val_loss(self, start_round: int) -> float | None:
        path = self.layout.root / "initial_val_loss.json"
        if start_round == 1:
            loss = self._val_loss()
            write_json_atomic(path, {"val_loss": loss})
            log.info("round 0: val %.4f (ppl %.1f)", loss, math.exp(loss))
            return loss
        return json.loads(path.read_text())["val_loss"] if path.is_file() else None

    def _val_loss(self) -> float:
        self.model.to(self.device)
        loss = mean_loss(
            self.model,
            self.validation,
            self.cfg.train.batch_size,
            self.cfg.train.eval_batches,
            self.device,
        )
        self.model.cpu()
        return loss

    def _round(self, round_: int) -> dict[str, Any] | None:
        """Run one round; None when no sampled client may train (every budget is spent)."""
        fed = self.cfg.federation
        started = time.perf_counter()
        random.seed(f"{self.cfg.seed}-{round_}")  # Flower samples clients with `random`
        arrays = to_array_record(self.model.state_dict(), fed.transport_dtype)
        config = round_config(self.cfg, self.model, self.layout.clients)
        try:
            messages = list(self.strategy.configure_train(round_, arrays, config, self.grid))
        except PrivacyBudgetExhausted as err:
            log.warning(
                "round %d: the user-level budget (privacy.max_epsilon) is spent: %s; "
                "the run ends after round %d",
                round_,
                err,
                round_ - 1,
            )
            self.stop_reason = "privacy budget spent"
            return None
        replies = list(self.grid.send_and_receive(messages, timeout=fed.round_timeout))
        failures = [
            f"node {m.metadata.src_node_id}: {short_reason(m.error.reason)}"
            for m in replies
            if m.has_error()
        ]
        ok = len(replies) - len(failures)
        if ok < fed.min_clients:
            raise FederationError(
                f"round {round_}: {ok} client(s) replied successfully, fewer than "
                f"federation.min_clients={fed.min_clients}; "
                f"failures: {'; '.join(failures) or 'none'}"
            )
        for failure in failures:
            log.warning("round %d: a client failed and was left out: %s", round_, failure)
        exhausted = self._read_privacy(round_, replies)
        if len(exhausted) == ok:
            log.warning(
                "round %d: no sampled client may train any more; the run ends after round %d",
                round_,
                round_ - 1,
            )
            self.stop_reason = "privacy budget spent"
            return None
        trained = [
            m.content["metrics"] for m in replies if not m.has_error() and m.content.array_records
        ]
        tokens = sum(int(m["tokens"]) for m in trained)
        aggregated, train_metrics = self.strategy.aggregate_train(round_, replies)
        if aggregated is None:
            raise FederationError(f"round {round_}: the strategy aggregated nothing (see the log)")
        self.model.load_state_dict(from_array_record(aggregated, "fp32"))
        heldout, continual = self._federated_heldout(round_)
        val_loss = self._val_loss()
        seconds = time.perf_counter() - started
        record = {
            "round": round_,
            "train_loss": float(train_metrics["train_loss"]),
            "val_loss": val_loss,
            "val_perplexity": math.exp(min(val_loss, 50.0)),
            "heldout_loss": heldout,
            "tokens": tokens,
            "tokens_per_s": tokens / seconds,
            "client_train_seconds": max(float(m["train_seconds"]) for m in trained),
            "user_level_epsilon": self._user_level_epsilon(),
            "seconds": seconds,
            "clients": ok - len(exhausted),
            "budget_exhausted_clients": len(exhausted),
            "epsilon_max": max(self.client_epsilon.values()) if self.client_epsilon else None,
            "client_epsilon": dict(self.client_epsilon) or None,
            "failed_clients": len(failures),
            "bytes_per_client": record_nbytes(arrays),
            **continual,
        }
        return record

    def _user_level_epsilon(self) -> float | None:
        spent = self.strategy.privacy_spent() if hasattr(self.strategy, "privacy_spent") else None
        return float(spent.epsilon) if spent is not None else None

    def _read_privacy(self, round_: int, replies: list[Message]) -> list[int]:
        """Update the federation ledger from the replies; return who declined to train."""
        answered = [m.content["metrics"] for m in replies if not m.has_error()]
        for metrics in answered:
            if "epsilon" in metrics:
                self.client_epsilon[str(int(metrics["partition-id"]))] = float(metrics["epsilon"])
        exhausted = [int(m["partition-id"]) for m in answered if m.get("budget-exhausted")]
        if exhausted:
            log.warning(
                "round %d: client(s) %s have spent their privacy budget and did not train",
                round_,
                exhausted,
            )
        return exhausted

    def _federated_heldout(self, round_: int) -> tuple[float | None, dict[str, Any]]:
        """Clients' held-out loss of the new global model; per experience when continual."""
        if self.cfg.federation.fraction_evaluate == 0:
            return None, {}
        arrays = to_array_record(self.model.state_dict(), self.cfg.federation.transport_dtype)
        config = round_config(self.cfg, self.model, self.layout.clients)
        messages = list(self.strategy.configure_evaluate(round_, arrays, config, self.grid))
        replies = list(
            self.grid.send_and_receive(messages, timeout=self.cfg.federation.round_timeout)
        )
        answered = [m.content["metrics"] for m in replies if not m.has_error()]
        if not answered:
            return None, {}
        weights = [float(m["num-examples"]) for m in answered]
        heldout = sum(float(m["heldout_loss"]) * w for m, w in zip(answered, weights, strict=True))
        heldout /= sum(weights)
        if self.cfg.continual.mode == "off":
            return heldout, {}
        experience, losses = merge_client_losses(answered)
        return heldout, {
            "experience": experience,
            "experience_loss": {str(j): loss for j, loss in losses.items()},
        }

    def _finish(
        self, records: list[dict[str, Any]], initial_val: float | None, seconds: float
    ) -> dict[str, Any]:
        self.model.save_pretrained(self.layout.final_model)
        self.tokenizer.save_pretrained(self.layout.final_model)
        if self.cfg.tracking.plots:
            plot_losses(records, initial_val, self.layout.val_loss_plot)
            if self.client_epsilon:
                plot_epsilon(records, self.layout.root / "privacy_epsilon.png")
            if records and records[-1].get("continual"):
                plot_loss_matrix(
                    records[-1]["continual"]["loss_matrix"],
                    self.layout.root / "loss_matrix.png",
                    f"{self.cfg.name}: continual={self.cfg.continual.mode}",
                )
        if not records:
            raise FederationError(
                "no round completed: every client's privacy budget was spent "
                "before round 1; raise the budget or start new ledgers"
            )
        last = records[-1]
        summary = {
            "status": "completed",
            "name": self.cfg.name,
            "rounds": last["round"],
            "initial_val_loss": initial_val,
            "final_val_loss": last["val_loss"],
            "final_val_perplexity": last["val_perplexity"],
            "best_val_loss": min(r["val_loss"] for r in records),
            "final_train_loss": last["train_loss"],
            "total_tokens": sum(r["tokens"] for r in records),
            "seconds_this_session": seconds,
            "parameters": num_parameters(self.model),
            "final_model": str(self.layout.final_model),
            "stop_reason": self.stop_reason,
            "privacy": self.cfg.privacy.mode,
            "epsilon_max": max(self.client_epsilon.values()) if self.client_epsilon else None,
            "client_epsilon": dict(self.client_epsilon) or None,
            "user_level_epsilon": last.get("user_level_epsilon"),
            "delta": self.cfg.privacy.delta if self.cfg.privacy.mode != "off" else None,
            "continual_mode": self.cfg.continual.mode,
            "continual": last.get("continual"),
        }
        write_json_atomic(self.layout.summary, summary)
        return summary


def round_config(cfg: FlowerbedConfig, model: torch.nn.Module, clients_dir: Path) -> ConfigRecord:
    """What every client needs besides the weights: architecture, settings, schedule."""
    continual = cfg.continual
    every = 0 if continual.mode == "off" else continual.arrival_interval(cfg.federation.rounds)
    return ConfigRecord(
        {
            "total-rounds": cfg.federation.rounds,
            "seed": cfg.seed,
            "train-config": json.dumps(to_plain_dict(cfg.train)),
            "model-config": json.dumps(model.config.to_dict(), default=str),
            "transport-dtype": cfg.federation.transport_dtype,
            "clients-dir": str(clients_dir.resolve()),
            "threads": max(1, int(cfg.federation.client_cpus)),
            "device": cfg.device,
            "privacy-config": json.dumps(to_plain_dict(cfg.privacy)),
            "continual-config": json.dumps(to_plain_dict(continual)),
            # rounds between experience arrivals; 0: every folder present
            "experience-every": every,
            # Flower's user-level accountant requires equal client weights.
            "uniform-weights": cfg.privacy.mode == "user_level",
        }
    )


def short_reason(reason: str) -> str:
    """The client's own exception message out of the traceback Flower wraps around it."""
    messages = re.findall(r"Message: (.+)", reason)
    if messages:
        return messages[-1].strip().rstrip("'>")
    lines = [line for line in reason.splitlines() if line.strip()]
    return lines[-1].strip() if lines else reason


def _progress_line(record: dict[str, Any], rounds: int) -> str:
    heldout = (
        f" | held-out {record['heldout_loss']:.4f}" if record["heldout_loss"] is not None else ""
    )
    failed = f" | {record['failed_clients']} failed" if record["failed_clients"] else ""
    if record.get("continual"):
        seen = record["continual"]
        failed += f" | exp {record['experience']} seen-avg {seen['average_loss']:.4f}"
        if seen["forgetting"] is not None:
            failed += f" forgetting {seen['forgetting']:+.4f}"
    if record.get("epsilon_max") is not None:
        failed += f" | ε {record['epsilon_max']:.2f}"
    return (
        f"round {record['round']}/{rounds} | train {record['train_loss']:.4f} | "
        f"val {record['val_loss']:.4f} (ppl {record['val_perplexity']:.1f}){heldout} | "
        f"{record['tokens_per_s']:,.0f} tok/s | {record['seconds']:.1f} s | "
        f"{record['clients']} clients{failed}"
    )


def run_federation(grid: Grid, cfg: FlowerbedConfig, run_dir: Path) -> dict[str, Any]:
    """Entry point shared by the simulation and deployment ServerApps."""
    torch.manual_seed(cfg.seed)
    return Federation(grid, cfg, run_dir).run()
