"""What a round leaves behind (`RoundRecord`, one line of metrics.jsonl) and the facts
the run's summary adds to the records (`server/summary.py`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class RoundRecord:
    round: int
    train_loss: float | None
    """Clients' mean training loss, weighted as their updates are (None: every client's
    policy withholds it, as under DP-SGD by default)."""
    val_loss: float
    """The new global model's loss on the server's validation split."""
    val_perplexity: float
    heldout_loss: float | None
    """Clients' held-out loss of the new global model (None: nobody evaluated, or every
    client's policy withholds it)."""
    tokens: int
    tokens_per_s: float
    client_train_seconds: float
    """The slowest client's training time."""
    seconds: float
    clients: int
    """Clients whose update was aggregated."""
    failed_clients: int
    """Clients whose reply was an error (a crash, a timeout)."""
    budget_exhausted_clients: int
    bytes_per_client: int
    """Weights sent to one client (it sends as many back, unless `masked_bytes_per_client`)."""
    client_epsilon: dict[str, float] | None
    """DP-SGD: each client's lifetime epsilon as it last reported it (by partition id)."""
    epsilon_max: float | None
    user_level_epsilon: float | None
    refused_clients: dict[str, str] | None = None
    """Clients whose policy refused the server's privacy settings, with their sentence."""
    rejected_clients: dict[str, str] | None = None
    """Clients whose reply admission left out (`server/admission.py`), with the sentence."""
    update_norms: dict[str, float] | None = None
    """Each admitted client's update norm (L2, its weights minus the global ones) as it
    arrived, by partition id: the spread `federation.max_update_norm` is chosen from
    (None: not measured, as no norm bound is set, or under secure aggregation)."""
    outside_guarantee: list[int] | None = None
    """Clients whose exact losses and counts left them under DP-SGD (`release: exact`)."""
    masked_bytes_per_client: int | None = None
    """Secure aggregation: the masked update one client sends back."""
    experience: int | None = None
    """Continual: the newest experience any client has seen."""
    experience_loss: dict[str, float] | None = None
    """Continual: held-out loss per experience (keys: experience index)."""
    continual: dict[str, Any] | None = None
    """Continual: the loss matrix so far, forgetting and backward transfer."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoundRecord:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class RunFacts:
    """What the summary says besides the records: the run's settings and this session."""

    name: str
    parameters: int
    final_model: str
    initial_val_loss: float | None
    seconds_this_session: float
    stop_reason: str
    privacy: str
    guarantee: str
    """What the run promises, in one line (`privacy.modes.guarantee`)."""
    delta: float | None
    continual_mode: str
    adapter: str
    base_hash: str | None
    """Adapters: the content hash of the frozen base every client checked."""
    shared_parameters: int
    """Parameters that train and travel (the adapters', or all of them)."""


def repeatedly_rejected(records: list[RoundRecord], at_least: int = 2) -> dict[str, str]:
    """Clients whose replies were left out in `at_least` consecutive rounds or more: the
    longest such run of rounds, and the last sentence."""
    found: dict[str, str] = {}
    clients = {c for r in records for c in (r.rejected_clients or {})}
    for client in sorted(clients, key=int):
        run: list[int] = []
        longest: list[int] = []
        for record in records:
            if client in (record.rejected_clients or {}):
                run.append(record.round)
                longest = max(longest, run, key=len)
            else:
                run = []
        if len(longest) >= at_least:
            last = next(r for r in reversed(records) if client in (r.rejected_clients or {}))
            found[client] = f"rounds {longest[0]}-{longest[-1]}: {last.rejected_clients[client]}"
    return found
