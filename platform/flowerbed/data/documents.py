"""The unit every corpus yields: a named domain with its documents."""

from __future__ import annotations

from dataclasses import dataclass


class DataError(ValueError):
    """Input data is unusable; the message names the file or shard and the problem."""


@dataclass
class Domain:
    """A group of documents of one kind (a package area, a topic, a source folder)."""

    name: str
    documents: list[str]
    source: str
    """Where the text came from, for error messages."""
    users: list[str] | None = None
    """The user (person, account) each document belongs to, where the corpus says."""

    @property
    def num_bytes(self) -> int:
        return sum(len(d.encode("utf-8")) for d in self.documents)
