"""A federation from start (or its newest checkpoint) to its summary.

Builds the global model and the round engine, continues after the newest round
checkpoint if the run directory has one (so `resume` needs nothing more), runs the
remaining rounds, and hands every record to the callbacks: when the round is trained
(`on_round_trained`), and again once the clients' held-out losses of its model have come
back with the next round's replies (`on_round_end`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from flwr.serverapp import Grid

from flowerbed.atomic import write_json_atomic
from flowerbed.config import FlowerbedConfig
from flowerbed.data.blocks import Blocks
from flowerbed.model.adapter import add_adapter, shared_state
from flowerbed.model.factory import build_model, num_parameters
from flowerbed.model.inner_state import KEEP as INNER_STATE_KEPT
from flowerbed.model.inner_state import inner_state_bytes
from flowerbed.model.runtime import resolve_device
from flowerbed.privacy.modes import guarantee, privacy_mode
from flowerbed.protocol import EvaluateReply
from flowerbed.server.callback import Callback
from flowerbed.server.callbacks import default_callbacks
from flowerbed.server.checkpoint import latest_checkpoint, load_checkpoint
from flowerbed.server.engine import RoundEngine
from flowerbed.server.instructions import model_spec
from flowerbed.server.outer import FedAvgOuter, outer_optimizer
from flowerbed.server.records import RoundRecord, RunFacts
from flowerbed.server.replies import FederationError, NothingToTrain
from flowerbed.server.stoppable import Interrupted
from flowerbed.server.summary import RunSummary, Status, summarize, summarize_failure
from flowerbed.tracking import MetricsLog, RunLayout

log = logging.getLogger("flowerbed")


def run_federation(
    grid: Grid, cfg: FlowerbedConfig, run_dir: Path, extra: Sequence[Callback] = ()
) -> RunSummary:
    """Run (or continue) every round; return the summary also written to summary.json.
    `extra`: callbacks beside the run's recorders (the terminal's live line)."""
    from transformers import AutoTokenizer

    torch.manual_seed(cfg.seed)
    layout = RunLayout(run_dir)
    tokenizer = AutoTokenizer.from_pretrained(layout.tokenizer)
    base = build_model(cfg.model, len(tokenizer), tokenizer.eos_token_id, cfg.seed)
    spec = model_spec(cfg, base)
    model = add_adapter(base, cfg.adapter)
    outer = outer_optimizer(cfg.strategy)
    start_round, records, pending = _restore(layout, model, outer)
    latest = pending or (records[-1] if records else None)
    engine = RoundEngine(
        grid,
        cfg,
        model,
        spec,
        outer,
        Blocks.load(layout.data, "validation"),
        resolve_device(cfg.device),
        dict(latest.client_epsilon or {}) if latest else {},
    )
    initial_val = _initial_val_loss(layout, engine, start_round)
    callbacks = default_callbacks(cfg, layout, model, outer, tokenizer, resume=start_round > 1)
    callbacks += extra
    ranks = cfg.federation.ranks_per_client
    log.info(
        "model: %s parameters on %s; %d clients%s; rounds %d..%d",
        f"{num_parameters(model):,}",
        engine.device,
        cfg.federation.num_clients,
        f" of {ranks} ranks each" if ranks > 1 else "",
        start_round,
        cfg.federation.rounds,
    )
    log.info("privacy: %s", guarantee(cfg.privacy))
    if cfg.train.sync_rounds:
        log.info(
            "synchronous warm start: rounds 1..%d take 1 local step each and are averaged; "
            "from round %d on, %d local steps and the %s outer step",
            cfg.train.sync_rounds,
            cfg.train.sync_rounds + 1,
            cfg.train.local_steps,
            cfg.strategy.name,
        )
    if engine.secure is not None:
        log.info("secure aggregation (SecAgg+): the server sees only the sum of the updates")
    shared = sum(t.numel() for t in shared_state(model).values())
    if spec.base_hash:
        log.info(
            "adapter %s: %s of the parameters train and travel (%.2f MB per client and "
            "direction in fp32); base model hash %s",
            cfg.adapter.mode,
            f"{shared:,}",
            shared * 4 / 1e6,
            spec.base_hash,
        )
    if cfg.strategy.keep_inner_state:
        size = inner_state_bytes(model) / 2**20
        log.info(
            "strategy %s: each client keeps its AdamW moments between rounds: %.1f MiB, "
            "and up to %d copies (%.1f MiB) in its state directory",
            cfg.strategy.name,
            size,
            INNER_STATE_KEPT,
            INNER_STATE_KEPT * size,
        )
    started = time.perf_counter()

    def facts() -> RunFacts:
        return RunFacts(
            name=cfg.name,
            parameters=num_parameters(model),
            final_model=str(layout.final_model),
            initial_val_loss=initial_val,
            seconds_this_session=time.perf_counter() - started,
            stop_reason=engine.stop_reason,
            privacy=cfg.privacy.mode,
            guarantee=guarantee(cfg.privacy),
            delta=cfg.privacy.delta if privacy_mode(cfg.privacy).protects else None,
            continual_mode=cfg.continual.mode,
            adapter=cfg.adapter.mode,
            base_hash=spec.base_hash,
            shared_parameters=shared,
        )

    try:
        rounds = range(start_round, cfg.federation.rounds + 1)
        _run_rounds(engine, rounds, records, pending, callbacks)
    except FederationError as err:
        status: Status = "interrupted" if isinstance(err, Interrupted) else "failed"
        summary = summarize_failure(records, facts(), str(err), status, added(callbacks))
        for callback in callbacks:
            callback.on_fail(records, summary)
        raise
    finally:
        for callback in callbacks:
            callback.close()
    if not records:
        raise NothingToTrain(
            "no round completed: every client's privacy budget was spent "
            "before round 1; raise the budget or start new ledgers"
        )
    summary = summarize(records, facts(), added(callbacks))
    for callback in callbacks:
        callback.on_finish(records, summary)
    return summary


def added(callbacks: Sequence[Callback]) -> dict[str, Any]:
    """What the recorders add to the summary (W&B: its run id)."""
    return {k: v for callback in callbacks for k, v in callback.summary_facts().items()}


def _run_rounds(
    engine: RoundEngine,
    rounds: range,
    records: list[RoundRecord],
    pending: RoundRecord | None,
    callbacks: list[Callback],
) -> None:
    """Every round; a round's record is finished by the next round's replies (or by the
    final evaluation), which carry the held-out losses of the model it made."""

    def finish(record: RoundRecord, heldout: list[EvaluateReply]) -> None:
        engine.complete(record, heldout, records)
        records.append(record)
        for callback in callbacks:
            callback.on_round_end(record)

    try:
        for round_ in rounds:
            exchange = engine.exchange(round_, pending.round if pending else None)
            if exchange is None:
                break
            if pending is not None:
                finish(pending, exchange.replies.heldout)
                pending = None
            record = engine.conclude(exchange)
            if record is None:
                break
            for callback in callbacks:
                callback.on_round_trained(record)
            if engine.evaluates:
                pending = record
            else:
                finish(record, [])
    except FederationError:
        if pending is not None:  # the last trained round, recorded without held-out losses
            finish(pending, [])
        raise
    if pending is not None:
        finish(pending, engine.final_heldout(pending.round))


def _restore(
    layout: RunLayout, model: torch.nn.Module, outer: FedAvgOuter
) -> tuple[int, list[RoundRecord], RoundRecord | None]:
    """The first round to run, the finished records before it, and the newest checkpoint's
    record when metrics.jsonl does not have it (it still waits for its held-out losses)."""
    metrics = MetricsLog(layout.metrics)
    checkpoint = latest_checkpoint(layout.checkpoints)
    if checkpoint is None:
        metrics.truncate_after(0)
        return 1, [], None
    done, saved = load_checkpoint(checkpoint, model, outer)
    log.info("resuming after round %d from %s", done, checkpoint)
    records = [RoundRecord.from_dict(r) for r in metrics.truncate_after(done)]
    finished = bool(records) and records[-1].round == done
    pending = None if finished or saved is None else RoundRecord.from_dict(saved)
    return done + 1, records, pending


def _initial_val_loss(layout: RunLayout, engine: RoundEngine, start_round: int) -> float | None:
    """The validation loss before round 1: measured on a fresh run, read back on resume."""
    path = layout.initial_val_loss
    if start_round == 1:
        loss = engine.val_loss()
        write_json_atomic(path, {"val_loss": loss}, durable=False)
        log.info("round 0: val %.4f (ppl %.1f)", loss, math.exp(loss))
        return loss
    return json.loads(path.read_text())["val_loss"] if path.is_file() else None
