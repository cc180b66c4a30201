"""Dataclasses as flat Flower records: the encoding `flowerbed.protocol` uses.

A field's key is its name in kebab-case (`local_steps` -> `local-steps`), nested
dataclasses are prefixed (`train.local-steps`), None is left out, and the round goes
under the key Flower's strategies write it to. Instructions travel in a ConfigRecord,
replies in a MetricRecord (which holds no bools: they travel as 0/1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar, get_args

from flwr.app import ConfigRecord

from flowerbed.config.loader import build_dataclass
from flowerbed.config.rules import field_types

SERVER_ROUND = "server-round"  # Flower's strategies write the round under this key
T = TypeVar("T")


def key_of(name: str) -> str:
    """A field's key on the wire: kebab-case, and the round where Flower's strategies put it."""
    return SERVER_ROUND if name == "round" else name.replace("_", "-")


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dataclass fields as flat ConfigRecord values: `train.local-steps`; None left out."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        key = prefix + key_of(field.name)
        if dataclasses.is_dataclass(value):
            out |= flatten(value, f"{key}.")
        elif value is not None:
            out[key] = value
    return out


def unflatten(cls: type[T], record: ConfigRecord) -> T:
    """The inverse of `_flatten`: absent keys are None (their fields are optional)."""
    return build_dataclass(cls, _fields_of(cls, record, ""))


def _fields_of(cls: type, record: ConfigRecord, prefix: str) -> dict[str, Any]:
    hints = field_types(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        key = prefix + key_of(field.name)
        kind = hints[field.name]
        if dataclasses.is_dataclass(kind):
            values[field.name] = _fields_of(kind, record, f"{key}.")
        else:
            values[field.name] = record.get(key)
    return values


def reply_metrics(reply: Any, prefix: str) -> dict[str, Any]:
    """A reply's fields as flat metrics; a nested reply under its field's prefix."""
    metrics: dict[str, Any] = {}
    for field in dataclasses.fields(reply):
        value = getattr(reply, field.name)
        key = prefix + key_of(field.name)
        if field.name == "weights" or value is None:
            continue
        if dataclasses.is_dataclass(value):
            metrics |= reply_metrics(value, f"{key}.")
        else:
            metrics[key] = int(value) if isinstance(value, bool) else value
    return metrics


def reply_values(cls: type, metrics: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The inverse of `reply_metrics`: absent keys keep their defaults."""
    types = field_types(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.name == "weights":
            continue
        key = prefix + key_of(field.name)
        nested = [t for t in get_args(types[field.name]) if dataclasses.is_dataclass(t)]
        if nested:
            inner = reply_values(nested[0], metrics, f"{key}.")
            if inner:
                values[field.name] = nested[0](**inner)
        elif key in metrics:
            value = metrics[key]  # MetricRecord holds no bools: they travel as 0/1
            values[field.name] = bool(value) if types[field.name] is bool else value
    return values
