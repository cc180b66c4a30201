"""The rules a config value obeys, declared on its field and checked in one place.

A range is part of a field's type, `local_steps: Annotated[int, at_least(1)]`, so reading
the schema says what is allowed; `Section.__post_init__` checks every annotated field and
then the section's own rules that span several fields (`check`).
"""

from __future__ import annotations

import functools
import typing
from dataclasses import dataclass, fields
from typing import Any, ClassVar


class SchemaError(ValueError):
    """A value breaks a rule of the schema; the message names the key."""


@functools.cache
def field_types(cls: type, extras: bool = False) -> dict[str, Any]:
    """A dataclass's resolved field types, once per class (`extras`: keep `Annotated` rules).

    The schema, the loader and the wire protocol all read them, for every Message.
    """
    return typing.get_type_hints(cls, include_extras=extras)


def require(condition: bool, message: str) -> None:
    if not condition:
        raise SchemaError(message)


@dataclass(frozen=True)
class Range:
    """An interval a number must lie in; None leaves that side open-ended."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{self.low}, {self.high}{right}"


def at_least(low: float) -> Range:
    return Range(low)


def positive() -> Range:
    return Range(0, low_open=True)


def between(low: float, high: float, *, open_: bool = False) -> Range:
    """[low, high], or (low, high) when `open_`."""
    return Range(low, high, low_open=open_, high_open=open_)


class Section:
    """A config section: `key` names it in messages; ranges come from the annotations."""

    key: ClassVar[str]

    def __post_init__(self) -> None:
        hints = field_types(type(self), extras=True)
        for field in fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            for rule in getattr(hints[field.name], "__metadata__", ()):
                if isinstance(rule, Range) and isinstance(value, int | float):
                    require(
                        rule.holds(value), f"{self.key}.{field.name} must be {rule}, got {value}"
                    )
        self.check()

    def check(self) -> None:
        """Rules that span several fields of the section (none unless a section has some)."""
