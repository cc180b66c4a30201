"""A Grid whose waits end when the user stops the run (Ctrl-C or SIGTERM in a simulation),
and show on a terminal how many clients have answered (`server/live.py`).

Flower's in-memory Grid waits for a round's replies until they all come or the round's
timeout passes; once the user has stopped the simulation no reply will come, so the
ServerApp's thread would wait out the timeout and keep the process alive. This Grid polls
the same way and gives up at once when `stop` is set, raising `Interrupted`, which the
federation records as `status: interrupted` with the command that resumes it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

from flowerbed.server.live import LiveStatus
from flowerbed.server.replies import FederationError


class Interrupted(FederationError):
    """The user stopped the run; it resumes from its newest checkpoint."""


class StoppableGrid:
    """`grid`, except that `send_and_receive` stops waiting when `stop` is set."""

    def __init__(self, grid: Grid, stop: threading.Event, live: LiveStatus | None = None) -> None:
        self.grid, self.stop, self.live = grid, stop, live

    def __getattr__(self, name: str):
        return getattr(self.grid, name)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        waiting = set(self.grid.push_messages(messages))
        sent, started = len(waiting), time.monotonic()
        deadline = None if timeout is None else started + timeout
        replies: list[Message] = []
        try:
            while waiting and (deadline is None or time.monotonic() < deadline):
                if self.stop.is_set():
                    raise Interrupted("the run was interrupted (Ctrl-C or SIGTERM)")
                pulled = list(self.grid.pull_messages(waiting))
                replies += pulled
                waiting -= {m.metadata.reply_to_message_id for m in pulled}
                if self.live is not None:
                    self.live.waiting(sent - len(waiting), sent, time.monotonic() - started)
                if waiting:
                    self.stop.wait(0.1)
        finally:
            if self.live is not None:
                self.live.clear()
        return replies
