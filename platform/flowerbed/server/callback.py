"""The recorder's interface: what a run tells its callbacks, and when (`callbacks.py`
holds the recorders every run has)."""

from __future__ import annotations

from typing import Any

from flowerbed.server.records import RoundRecord
from flowerbed.server.summary import RunSummary


class Callback:
    """The interface: every hook does nothing unless a recorder overrides it."""

    def on_round_trained(self, record: RoundRecord) -> None:
        """After a round's aggregation and validation; `heldout_loss` is not known yet."""

    def on_round_end(self, record: RoundRecord) -> None:
        """After a round's record is complete, held-out losses included."""

    def summary_facts(self) -> dict[str, Any]:
        """What this recorder adds to the run's summary, stated before it is made (the
        summary is frozen: every recorder reads the same one)."""
        return {}

    def on_finish(self, records: list[RoundRecord], summary: RunSummary) -> None:
        """After the last round, with every record of the run and its summary."""

    def on_fail(self, records: list[RoundRecord], summary: RunSummary) -> None:
        """When a round stops the run (its summary says `failed` and why)."""

    def close(self) -> None:
        """When the run ends, finished or failed: let go of what the recorder holds."""
