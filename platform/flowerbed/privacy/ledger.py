"""The per-client privacy ledger: every release's (noise, sample rate, steps), on local disk.

It is the client's memory of what it has spent, over every round, experience and run of
its life. A release is written ahead (atomically, durably, counted in ε) before anything
is drawn for it, with a fresh random nonce that keys its noise and sample
(`privacy.secret`), so a crash can only make the ledger count a round that was never
released, never the reverse, and no two releases share noise: a round re-run after a
crash, with the same request, finds its pending entry and draws exactly what it drew;
anything else (another request, a restored backup, a replayed round number) gets a new
nonce and a new entry.

A copy of the ledger (its mirror) is kept outside the state directory, named by the
node's data and host: a state directory restored from an older backup, or replaced by a
new one for the same data, would forget the releases made since, so opening a ledger
that lacks entries its mirror holds counts them again, with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flowerbed.atomic import write_json_atomic
from flowerbed.privacy.accounting import epsilon

FILENAME = "privacy_ledger.json"
log = logging.getLogger("flowerbed")


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
    nonce: str = ""
    """128 random bits (hex) drawn for this release alone: its noise and sample are keyed
    by them (empty in ledgers written before nonces existed)."""
    request: str = ""
    """A digest of what the release was computed from (instructions, weights received,
    the node's pool): a re-run may reuse the nonce only for the very same request."""
    pending: bool = False
    """Written ahead and not yet finished: the update may or may not have left."""


@dataclass
class PrivacyLedger:
    delta: float
    accountant: str
    unit: str = "sequence"
    """What each ε protects: one sequence, document or user (one per life, as delta)."""
    noise_multiplier: float | None = None
    """The calibrated (or given) noise multiplier, fixed once for the client's life."""
    planned_steps: int | None = None
    mechanism: str = "dp_sgd"
    """`dp_sgd`, or `banded` (correlated noise, `privacy/banded.py`): fixed with the noise.
    Under `banded` each entry's rate and steps are those its DP-SGD equivalent would
    have: `bands` times the Poisson rate, over steps / `bands` steps."""
    coefficients: list[float] = field(default_factory=lambda: [1.0])
    """The banded strategy's coefficients, one per band ([1.0]: DP-SGD)."""
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

    def write_ahead(
        self,
        path: Path,
        round_: int,
        request: str,
        draw: tuple[float, float, int],
        noise_seed: str,
        spent: float | None = None,
        mirror: Path | None = None,
    ) -> LedgerEntry:
        """Count a release before anything is drawn for it: a pending entry with a fresh
        nonce, written durably (`draw`: noise multiplier, sample rate, steps; `spent`:
        `epsilon_after` of the same, when already computed)."""
        if spent is None:
            spent = self.epsilon_after(*draw)
        noise_multiplier, sample_rate, steps = draw
        entry = LedgerEntry(
            round_, noise_multiplier, sample_rate, steps, spent, time.time(), noise_seed,
            nonce=os.urandom(16).hex(), request=request, pending=True,
        )  # fmt: skip
        self.entries.append(entry)
        self.save(path, mirror)
        return entry

    def pending_for(self, request: str) -> LedgerEntry | None:
        """The newest entry, if it is pending for this very request (a crash re-run)."""
        last = self.entries[-1] if self.entries else None
        return last if last and last.pending and last.request == request else None

    def finish(self, path: Path, nonce: str, mirror: Path | None = None) -> None:
        """Mark the release of `nonce` as done (it stays counted either way)."""
        for entry in self.entries:
            if entry.nonce == nonce:
                entry.pending = False
        self.save(path, mirror)

    def note_exact_release(self, path: Path, round_: int, mirror: Path | None = None) -> None:
        """Mark that round `round_`'s exact metrics left the node, durably."""
        self.exact_metrics_rounds.append(round_)
        self.save(path, mirror)

    def save(self, path: Path, mirror: Path | None = None) -> None:
        """Write the ledger (and its mirror) atomically and durably, readable by the node's
        owner only: it must survive a crash right after."""
        data = {"version": 2, **asdict(self)}
        for target in (path, mirror):
            if target is not None:
                write_json_atomic(target, data, durable=True, private=True)

    @classmethod
    def open(
        cls,
        path: Path,
        delta: float,
        accountant: str,
        unit: str = "sequence",
        mirror: Path | None = None,
    ) -> PrivacyLedger:
        """Load the ledger at `path`, or start an empty one; delta, accountant and the
        privacy unit must match (ledgers written before units existed counted sequences).
        What its `mirror` holds and it lacks is counted again."""
        ledger = _read(path) or cls(delta=delta, accountant=accountant, unit=unit)
        copy = _read(mirror) if mirror is not None else None
        for kept, where in ((ledger, path), (copy, mirror)):
            if kept is not None and (kept.delta, kept.accountant, kept.unit) != (
                delta,
                accountant,
                unit,
            ):
                raise LedgerError(
                    f"privacy ledger {where} was kept with delta={kept.delta}, accountant="
                    f"{kept.accountant}, unit={kept.unit}; a client's life uses one of each: "
                    "set privacy.delta, privacy.accountant and privacy.unit to those, or give "
                    "this node a new state directory (its ε then starts again from 0 for a "
                    "new life, which its privacy officer must accept)"
                )
        if copy is not None:
            ledger.recount(path, copy, mirror)
        return ledger

    def recount(self, path: Path, mirror_ledger: PrivacyLedger, mirror: Path | None) -> None:
        """Take in what the mirror knows and this ledger does not (a restored backup, a
        replaced or new state directory for the same data): releases it lacks are counted
        again, with a warning, and a release the mirror saw finish is finished here too
        (a stale pending entry must not let a later request reuse a nonce that left)."""
        finished = {e.nonce for e in mirror_ledger.entries if e.nonce and not e.pending}
        for entry in self.entries:
            entry.pending = entry.pending and entry.nonce not in finished
        known = {e.nonce for e in self.entries}
        lost = [e for e in mirror_ledger.entries if e.nonce and e.nonce not in known]
        if not lost:
            return
        log.warning(
            "privacy ledger %s lacks %d release(s) that its mirror %s records (restored "
            "from a backup, or a new state directory for the same data?): they are counted "
            "again",
            path, len(lost), mirror,
        )  # fmt: skip
        if self.noise_multiplier is None:  # the life's fixed choices, as the mirror kept them
            self.mechanism = mirror_ledger.mechanism
            self.coefficients = mirror_ledger.coefficients
        self.noise_multiplier = self.noise_multiplier or mirror_ledger.noise_multiplier
        self.planned_steps = self.planned_steps or mirror_ledger.planned_steps
        history = sorted([*self.entries, *lost], key=lambda e: e.time)
        self.entries = []
        for entry in history:  # each entry's ε is the lifetime ε after it, recomputed
            entry.epsilon = self.epsilon_after(
                entry.noise_multiplier, entry.sample_rate, entry.steps
            )
            self.entries.append(entry)
        self.save(path, mirror)


def _read(path: Path) -> PrivacyLedger | None:
    """The ledger stored at `path` (None: no file)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        entries = [LedgerEntry(**e) for e in data.pop("entries")]
        data.pop("version", None)
        return PrivacyLedger(**data, entries=entries)
    except (json.JSONDecodeError, TypeError, KeyError) as err:
        raise LedgerError(
            f"privacy ledger {path} is unreadable ({err}); restore it from a backup, "
            "never delete it"
        ) from None
