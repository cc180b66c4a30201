"""A terminal's live line while a round waits for its clients.

Rounds of large models take minutes, and the round's log line comes only at its end; in
between, one line that rewrites itself says how many of the sampled clients have
answered, how long the round has run, and when the run should end at the pace of the
rounds so far. It draws only on a terminal (never into a log file or a pipe) and is off
with `tracking.progress=false`.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from flowerbed.server.callback import Callback
from flowerbed.server.records import RoundRecord


class LiveStatus(Callback):
    """The live line: fed by the Grid's waits (`waiting`), paced by the finished rounds."""

    def __init__(self, rounds: int, stream: TextIO | None = None) -> None:
        self.rounds, self.stream = rounds, stream or sys.stdout
        self.started = time.monotonic()
        self.first_round: int | None = None
        self.last_round = 0
        self.width = 0

    @classmethod
    def for_terminal(cls, rounds: int, enabled: bool) -> LiveStatus | None:
        """A live line when asked for and stdout is a terminal (None otherwise)."""
        return cls(rounds) if enabled and sys.stdout.isatty() else None

    def on_round_trained(self, record: RoundRecord) -> None:
        if self.first_round is None:
            self.first_round = record.round
        self.last_round = record.round

    def waiting(self, answered: int, sent: int, seconds: float) -> None:
        """Redraw: `answered` of `sent` Messages have come back after `seconds`."""
        current = self.last_round + 1
        what = f"round {current}/{self.rounds}" if current <= self.rounds else "final evaluation"
        line = f"  {what}: {answered} of {sent} answered, {seconds:.0f} s{self._eta()}"
        self.stream.write("\r" + line.ljust(self.width))
        self.stream.flush()
        self.width = len(line)

    def clear(self) -> None:
        """Erase the line, so the next log line starts clean."""
        if self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0

    def _eta(self) -> str:
        done = self.last_round - (self.first_round or 1) + 1
        if self.first_round is None or done < 1:
            return ""
        per_round = (time.monotonic() - self.started) / done
        left = per_round * (self.rounds - self.last_round)
        if left < 1:
            return ""
        return f" | run ends in ~{left / 60:.0f} min" if left >= 90 else f" | ~{left:.0f} s left"
