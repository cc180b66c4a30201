"""What a client remembers of its continual life, on its own disk: `continual_state.json`.

The experiences it has seen (in arrival order, with the round each arrived) and its
replay buffer (references into its own data, never the data). It is written atomically
after every change, so a restarted client picks up where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flowerbed.atomic import write_json_atomic

FILENAME = "continual_state.json"


class ContinualStateError(ValueError):
    """The state on disk does not fit the client's data; the message says what to do."""


@dataclass
class ContinualState:
    experiences: list[str] = field(default_factory=list)
    """Experience names in arrival order."""
    arrival_rounds: list[int] = field(default_factory=list)
    buffer: dict[str, Any] | None = None
    """The replay buffer as `continual.replay` stores it, or None."""

    @classmethod
    def load(cls, path: Path) -> ContinualState:
        if not path.is_file():
            return cls()
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as err:
            raise ContinualStateError(
                f"the continual state {path} is unreadable ({err}): restore it from a backup, "
                "or delete it to rebuild the replay buffer from the client's data"
            ) from err

    def save(self, path: Path) -> None:
        write_json_atomic(path, asdict(self), durable=True, private=True)

    def note_arrivals(self, names: list[str], round_: int) -> list[str]:
        """Record the experiences present this round; return the ones that are new.

        A resumed run can re-run rounds from before an arrival: experiences it has not
        reached yet are forgotten again (the buffer is then rebuilt, deterministically).
        """
        for seen, name in zip(self.experiences, names, strict=False):
            if seen != name:
                raise ContinualStateError(
                    f"experience {name!r} is where {seen!r} was seen before: new experience "
                    "folders must sort after the ones already seen (name them exp-000, "
                    "exp-001, ... in arrival order)"
                )
        if len(names) < len(self.experiences):
            del self.experiences[len(names) :], self.arrival_rounds[len(names) :]
        new = names[len(self.experiences) :]
        self.experiences += new
        self.arrival_rounds += [round_] * len(new)
        return new
