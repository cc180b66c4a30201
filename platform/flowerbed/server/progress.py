"""The lines a person reads while a run goes: one when a round is trained, one when the
clients' held-out losses of its model arrive, and at the end who was left out."""

from __future__ import annotations

import logging

from flowerbed.server.callback import Callback
from flowerbed.server.records import RoundRecord
from flowerbed.server.summary import RunSummary

log = logging.getLogger("flowerbed")


class ProgressLine(Callback):
    """A log line when a round is trained (losses, throughput, clients, epsilon), and one
    when the clients' held-out losses of its model arrive (with the next round)."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds

    def on_round_trained(self, record: RoundRecord) -> None:
        log.info(progress_line(record, self.rounds))

    def on_round_end(self, record: RoundRecord) -> None:
        if record.heldout_loss is not None:
            log.info(heldout_line(record, self.rounds))

    def on_finish(self, records: list[RoundRecord], summary: RunSummary) -> None:
        for client, what in (summary.repeatedly_rejected or {}).items():
            log.warning("client %s's replies were left out in %s", client, what)


def progress_line(record: RoundRecord, rounds: int) -> str:
    parts = [
        f"round {record.round}/{rounds}",
        "train withheld" if record.train_loss is None else f"train {record.train_loss:.4f}",
        f"val {record.val_loss:.4f} (ppl {record.val_perplexity:.1f})",
        f"{record.tokens_per_s:,.0f} tok/s",
        f"{record.seconds:.1f} s",
        f"{record.clients} clients",
    ]
    if record.failed_clients:
        parts.append(f"{record.failed_clients} failed")
    if record.refused_clients:
        parts.append(f"{len(record.refused_clients)} refused")
    if record.rejected_clients:
        parts.append(f"{len(record.rejected_clients)} rejected")
    if record.epsilon_max is not None:
        parts.append(f"ε {record.epsilon_max:.2f}")
    return " | ".join(parts)


def heldout_line(record: RoundRecord, rounds: int) -> str:
    parts = [f"round {record.round}/{rounds}", f"held-out {record.heldout_loss:.4f}"]
    if record.continual:
        seen = record.continual
        experience = f"exp {record.experience} seen-avg {seen['average_loss']:.4f}"
        if seen["forgetting"] is not None:
            experience += f" forgetting {seen['forgetting']:+.4f}"
        parts.append(experience)
    return " | ".join(parts)
