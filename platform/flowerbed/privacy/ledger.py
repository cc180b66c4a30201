"""The per-client privacy ledger: every round's (noise, sample rate, steps), on local disk.

It is the client's memory of what it has spent, over every round, experience and run of
its life. A round is written (atomically) before its update leaves the client, so a crash
can only make the ledger count a round that was never released, never the reverse.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flowerbed.atomic import write_json_atomic
from flowerbed.privacy.accounting import epsilon

FILENAME = "privacy_ledger.json"


class LedgerError(ValueError):
    """The ledger on disk does not match the privacy settings; the message says how."""


@dataclass
class LedgerEntry:
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    epsilon: float
    """Lifetime epsilon after this entry."""
    time: float = 0.0
    noise_seed: str = "run"
    """`secret`: the noise and sample came from the node's secret; `run`: from the run's
    seed, not private against anyone who knows it (ledgers written before the node
    secret existed hold only such entries)."""


@dataclass
class PrivacyLedger:
    delta: float
    accountant: str
    unit: str = "sequence"
    """What each ε protects: one sequence, document or user (one per life, as delta)."""
    noise_multiplier: float | None = None
    """The calibrated (or given) noise multiplier, fixed once for the client's life."""
    planned_steps: int | None = None
    entries: list[LedgerEntry] = field(default_factory=list)
    exact_metrics_rounds: list[int] = field(default_factory=list)
    """Rounds whose exact losses and counts left the node (its policy's `release: exact`):
    outside the guarantee, which covers the updates only."""

    @property
    def history(self) -> list[tuple[float, float, int]]:
        return [(e.noise_multiplier, e.sample_rate, e.steps) for e in self.entries]

    @property
    def epsilon(self) -> float:
        return self.entries[-1].epsilon if self.entries else 0.0

    @property
    def steps(self) -> int:
        return sum(e.steps for e in self.entries)

    def epsilon_after(self, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """What the lifetime epsilon would be after `steps` more steps."""
        return epsilon(
            [*self.history, (noise_multiplier, sample_rate, steps)], self.delta, self.accountant
        )

    def record(
        self,
        path: Path,
        round_: int,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        noise_seed: str,
        spent: float | None = None,
    ) -> float:
        """Append a round and write the ledger atomically; return the lifetime epsilon
        (`spent`: `epsilon_after` of the same round, when already computed)."""
        if spent is None:
            spent = self.epsilon_after(noise_multiplier, sample_rate, steps)
        self.entries.append(
            LedgerEntry(
                round_, noise_multiplier, sample_rate, steps, spent, time.time(), noise_seed
            )
        )
        self.save(path)
        return spent

    def note_exact_release(self, path: Path, round_: int) -> None:
        """Mark that round `round_`'s exact metrics left the node, durably."""
        self.exact_metrics_rounds.append(round_)
        self.save(path)

    def save(self, path: Path) -> None:
        """Write the ledger atomically and durably: it must survive a crash right after."""
        write_json_atomic(path, {"version": 1, **asdict(self)}, durable=True)

    @classmethod
    def open(
        cls, path: Path, delta: float, accountant: str, unit: str = "sequence"
    ) -> PrivacyLedger:
        """Load the ledger at `path`, or start an empty one; delta, accountant and the
        privacy unit must match (ledgers written before units existed counted sequences)."""
        if not path.is_file():
            return cls(delta=delta, accountant=accountant, unit=unit)
        try:
            data = json.loads(path.read_text())
            entries = [LedgerEntry(**e) for e in data.pop("entries")]
            data.pop("version", None)
            ledger = cls(**data, entries=entries)
        except (json.JSONDecodeError, TypeError, KeyError) as err:
            raise LedgerError(
                f"privacy ledger {path} is unreadable ({err}); restore it from a backup, "
                "never delete it"
            ) from None
        if (ledger.delta, ledger.accountant, ledger.unit) != (delta, accountant, unit):
            raise LedgerError(
                f"privacy ledger {path} was kept with delta={ledger.delta}, accountant="
                f"{ledger.accountant}, unit={ledger.unit}; a client's life uses one of each: "
                "set privacy.delta, privacy.accountant and privacy.unit to those, or give "
                "this node a new state directory (its ε then starts again from 0 for a "
                "new life, which its privacy officer must accept)"
            )
        return ledger
