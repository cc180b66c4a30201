"""What a run records as it goes, one callback each (composer's shape).

The round engine knows nothing of these: once a round is trained every callback's
`on_round_trained` sees its record, and `on_round_end` sees it again once the clients'
held-out losses of the round's model are in (they ride on the next round's Messages);
at the end `on_finish` sees the summary (frozen: what a recorder adds to it, it states
before, in `summary_facts`). A callback only records; it never changes what the
federation does.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from flowerbed.config import FlowerbedConfig
from flowerbed.model.adapter import is_adapted, save_adapter_outputs
from flowerbed.server.callback import Callback
from flowerbed.server.checkpoint import snapshot, write_checkpoint
from flowerbed.server.outer import FedAvgOuter
from flowerbed.server.progress import ProgressLine
from flowerbed.server.records import RoundRecord
from flowerbed.server.summary import RunSummary
from flowerbed.tracking import MetricsLog, RunLayout

log = logging.getLogger("flowerbed")


class MetricsFile(Callback):
    """metrics.jsonl, one line per round, written durably."""

    def __init__(self, layout: RunLayout) -> None:
        self.log = MetricsLog(layout.metrics)

    def on_round_end(self, record: RoundRecord) -> None:
        self.log.append(record.as_dict())


class Checkpoints(Callback):
    """The global weights after every round, with the round's record (its held-out losses
    not yet known); the newest `keep` are kept for resume.

    Written by a background thread from a snapshot, so the next round does not wait for
    the disk (0.4-1 s at 125M on 2 cores). Each write waits for the one before; the run's
    end, finished or failed, waits for the last. A crash mid-write leaves the previous
    checkpoint (writes are atomic), so resume stays exact.
    """

    def __init__(
        self, layout: RunLayout, model: torch.nn.Module, outer: FedAvgOuter, keep: int
    ) -> None:
        self.layout, self.model, self.outer, self.keep = layout, model, outer, keep
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self.pending: Future | None = None

    def on_round_trained(self, record: RoundRecord) -> None:
        self._wait()
        weights, outer_state = snapshot(self.model, self.outer)
        self.pending = self.writer.submit(
            write_checkpoint,
            self.layout.checkpoints,
            record.round,
            weights,
            outer_state,
            self.keep,
            record.as_dict(),
        )

    def on_finish(self, records: list[RoundRecord], summary: RunSummary) -> None:
        self._wait()

    def close(self) -> None:
        self._wait()
        self.writer.shutdown()

    def _wait(self) -> None:
        """Until the write in flight is on disk; a failed write raises here."""
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()


class FinalModel(Callback):
    """The final global model and tokenizer in Hugging Face format; under LoRA the adapters
    merged into it, and the adapter alone in PEFT's format too."""

    def __init__(self, layout: RunLayout, model: torch.nn.Module, tokenizer: Any) -> None:
        self.layout, self.model, self.tokenizer = layout, model, tokenizer

    def on_finish(self, records: list[RoundRecord], summary: RunSummary) -> None:
        if is_adapted(self.model):
            save_adapter_outputs(self.model, self.layout.final_adapter, self.layout.final_model)
            self.tokenizer.save_pretrained(self.layout.final_adapter)
        else:
            self.model.save_pretrained(self.layout.final_model)
        self.tokenizer.save_pretrained(self.layout.final_model)

    def on_fail(self, records: list[RoundRecord], summary: RunSummary) -> None:
        self.on_finish(records, summary)  # the last finite model, kept


class Plots(Callback):
    """Loss per round; each client's epsilon under DP-SGD; the continual loss matrix."""

    def __init__(self, layout: RunLayout, title: str, target_epsilon: float | None) -> None:
        self.layout, self.title = layout, title
        self.target_epsilon = target_epsilon
        """The server's ε budget, drawn as a line (a node's own policy may cap lower)."""

    def on_finish(self, records: list[RoundRecord], summary: RunSummary) -> None:
        from flowerbed.tracking.plots import plot_epsilon, plot_loss_matrix, plot_losses

        rows = [r.as_dict() for r in records]
        plot_losses(rows, summary.initial_val_loss, self.layout.val_loss_plot)
        if summary.client_epsilon:
            plot_epsilon(rows, self.layout.epsilon_plot, self.target_epsilon, summary.delta)
        if summary.continual:
            matrix = summary.continual["loss_matrix"]
            plot_loss_matrix(matrix, self.layout.loss_matrix_plot, self.title)


class SummaryFile(Callback):
    """summary.json, written atomically: `status` says `completed` only once it is there."""

    def __init__(self, layout: RunLayout) -> None:
        self.path = layout.summary

    def on_finish(self, records: list[RoundRecord], summary: RunSummary) -> None:
        from flowerbed.atomic import write_json_atomic

        write_json_atomic(self.path, summary.as_dict(), durable=True)

    def on_fail(self, records: list[RoundRecord], summary: RunSummary) -> None:
        self.on_finish(records, summary)


class WandbLog(Callback):
    """Weights & Biases (offline by default): every record, then the summary, the plots and
    the final model; the summary names the W&B run, so a sweep report can link it."""

    def __init__(self, cfg: FlowerbedConfig, layout: RunLayout, resume: bool) -> None:
        from flowerbed.tracking.wandb_run import WandbRun

        self.layout, self.run = layout, WandbRun(cfg, layout.root, resume)

    def on_round_end(self, record: RoundRecord) -> None:
        self.run.log(record.as_dict())

    def summary_facts(self) -> dict[str, Any]:
        return {"wandb_run_id": self.run.id}

    def on_finish(self, records: list[RoundRecord], summary: RunSummary) -> None:
        layout = self.layout
        plots = [layout.val_loss_plot, layout.epsilon_plot, layout.loss_matrix_plot]
        self.run.finish(summary.as_dict(), plots, layout.final_model)


def default_callbacks(
    cfg: FlowerbedConfig,
    layout: RunLayout,
    model: torch.nn.Module,
    outer: FedAvgOuter,
    tokenizer: Any,
    resume: bool,
) -> list[Callback]:
    """Every recorder a run has, in the order they run."""
    callbacks: list[Callback] = [
        MetricsFile(layout),
        ProgressLine(cfg.federation.rounds),
        Checkpoints(layout, model, outer, cfg.tracking.keep_checkpoints),
        FinalModel(layout, model, tokenizer),
    ]
    if cfg.tracking.plots:
        title = f"{cfg.name}: continual={cfg.continual.mode}"
        budget = cfg.privacy.budget if cfg.privacy.mode == "dp_sgd" else None
        callbacks.append(Plots(layout, title, budget))
    if cfg.tracking.wandb:  # after the final model and plots, which it uploads
        callbacks.append(WandbLog(cfg, layout, resume))
    return [*callbacks, SummaryFile(layout)]
