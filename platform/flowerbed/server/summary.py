"""summary.json as a type: how a run ended and where it got to.

Written once, at the end of a run (completed, failed or interrupted), by
`summarize`/`summarize_failure` from the round records and the run's facts; every callback
reads the same frozen `RunSummary`, and what a recorder adds (W&B's run id) it states
before the summary is made (`Callback.summary_facts`). Readers of a summary.json on disk
(`flowerbed runs`, sweep reports) go through `RunSummary.read`, which tolerates the keys
of older runs.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from flowerbed.server.records import RoundRecord, RunFacts, repeatedly_rejected

Status = Literal["completed", "failed", "interrupted", "running"]


@dataclass(frozen=True)
class RunSummary:
    status: Status
    name: str
    rounds: int
    """The last round trained (0: none)."""
    final_model: str
    initial_val_loss: float | None
    final_val_loss: float | None = None
    final_val_perplexity: float | None = None
    best_val_loss: float | None = None
    final_train_loss: float | None = None
    """None when every client's policy withholds its loss (DP-SGD by default)."""
    total_tokens: int | None = None
    seconds_this_session: float | None = None
    parameters: int | None = None
    shared_parameters: int | None = None
    adapter: str | None = None
    base_hash: str | None = None
    stop_reason: str | None = None
    privacy: str | None = None
    guarantee: str | None = None
    epsilon_max: float | None = None
    client_epsilon: dict[str, float] | None = None
    user_level_epsilon: float | None = None
    delta: float | None = None
    continual_mode: str | None = None
    continual: dict[str, Any] | None = None
    refusals: dict[str, str] | None = None
    rejections: dict[str, str] | None = None
    repeatedly_rejected: dict[str, str] | None = None
    outside_guarantee_clients: list[int] | None = None
    error: str | None = None
    """Why a failed or interrupted run stopped, in one sentence."""
    resume: str | None = None
    """An interrupted simulation: the command that continues it."""
    wandb_run_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSummary:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values.setdefault("status", "running")
        for key in ("name", "final_model"):
            values.setdefault(key, "")
        values.setdefault("rounds", 0)
        values.setdefault("initial_val_loss", None)
        return cls(**values)

    @classmethod
    def read(cls, path: Path) -> RunSummary:
        """A summary.json on disk (ValueError: not a summary)."""
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{path} is not a run summary")
        return cls.from_dict(data)


def summarize(
    records: list[RoundRecord], facts: RunFacts, extra: dict[str, Any] | None = None
) -> RunSummary:
    """The summary of a run that completed its rounds; `extra`: what recorders add."""
    last = records[-1]
    return RunSummary(
        status="completed",
        name=facts.name,
        rounds=last.round,
        initial_val_loss=facts.initial_val_loss,
        final_val_loss=last.val_loss,
        final_val_perplexity=last.val_perplexity,
        best_val_loss=min(r.val_loss for r in records),
        final_train_loss=last.train_loss,
        total_tokens=sum(r.tokens for r in records),
        seconds_this_session=facts.seconds_this_session,
        parameters=facts.parameters,
        shared_parameters=facts.shared_parameters,
        adapter=facts.adapter,
        base_hash=facts.base_hash,
        final_model=facts.final_model,
        stop_reason=facts.stop_reason,
        privacy=facts.privacy,
        guarantee=facts.guarantee,
        epsilon_max=last.epsilon_max,
        client_epsilon=last.client_epsilon,
        user_level_epsilon=last.user_level_epsilon,
        delta=facts.delta,
        continual_mode=facts.continual_mode,
        continual=last.continual,
        refusals={k: v for r in records for k, v in (r.refused_clients or {}).items()} or None,
        rejections={k: v for r in records for k, v in (r.rejected_clients or {}).items()} or None,
        repeatedly_rejected=repeatedly_rejected(records) or None,
        outside_guarantee_clients=sorted({c for r in records for c in (r.outside_guarantee or [])})
        or None,
        **(extra or {}),
    )


def summarize_failure(
    records: list[RoundRecord],
    facts: RunFacts,
    error: str,
    status: Status = "failed",
    extra: dict[str, Any] | None = None,
) -> RunSummary:
    """The summary of a run that stopped early (`status`: failed on an error, or
    interrupted by the user): what it reached, and why it stopped; `final_model` holds
    the last global model every admitted update kept finite."""
    reached = (
        summarize(records, facts, extra)
        if records
        else RunSummary(
            status=status,
            name=facts.name,
            rounds=0,
            final_model=facts.final_model,
            initial_val_loss=facts.initial_val_loss,
            **(extra or {}),
        )
    )
    return dataclasses.replace(reached, status=status, error=error, stop_reason=status)
