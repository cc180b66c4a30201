"""Turn a composed Hydra/OmegaConf tree (or a saved YAML file) into a FlowerbedConfig.

Checks every key and value against the dataclass schema and raises one ConfigError
whose message names the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from flowerbed.config.auto_batch import settle_auto_batch
from flowerbed.config.rules import SchemaError, field_types
from flowerbed.config.schema import FlowerbedConfig

T = TypeVar("T")


class ConfigError(ValueError):
    """The configuration is wrong; the message says which key and how to fix it."""


def load_config(source: Any) -> FlowerbedConfig:
    """Validate a config given as a mapping, an OmegaConf node, or a YAML file path."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        source = OmegaConf.load(path)
    if isinstance(source, DictConfig):
        missing = sorted(OmegaConf.missing_keys(source))
        if missing:
            raise ConfigError(
                f"{missing[0]} has no value (its config option marks it ???): "
                f"give it on the command line, e.g. {missing[0]}=..."
            )
        source = OmegaConf.to_container(source, resolve=True)
    if not isinstance(source, dict):
        raise ConfigError(f"a config must be a mapping, got {type(source).__name__}")
    source = {k: v for k, v in source.items() if k != "hydra"}
    try:
        settle_auto_batch(source)
        return build_dataclass(FlowerbedConfig, source, "")
    except SchemaError as err:
        raise ConfigError(str(err)) from None


def to_plain_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as nested plain dicts (for YAML, JSON and Flower messages)."""
    return dataclasses.asdict(config)


def build_dataclass(cls: type[T], data: Any, prefix: str = "") -> T:
    """Build dataclass `cls` from a mapping, checking keys and types; `prefix` names the keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]}; allowed keys under "
            f"{prefix.rstrip('.') or 'the top level'}: {', '.join(sorted(names))}"
        )
    absent = sorted(names - set(data))
    if absent:
        raise ConfigError(
            f"missing key {prefix}{absent[0]}: every key has its default in conf/config.yaml; "
            "compose configs from there (flowerbed.config.compose_config)"
        )
    values = {name: _coerce(hints[name], data[name], f"{prefix}{name}") for name in data}
    return cls(**values)


def _coerce(kind: Any, value: Any, key: str) -> Any:
    origin = get_origin(kind)
    if dataclasses.is_dataclass(kind):
        return build_dataclass(kind, value if value is not None else {}, f"{key}.")
    if origin is Literal:
        allowed = get_args(kind)
        if value not in allowed:
            choices = ", ".join(str(a) for a in allowed)
            raise ConfigError(f"{key} must be one of {choices}; got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        if value is None:
            return None
        options = [a for a in get_args(kind) if a is not type(None)]
        words = [w for a in options if get_origin(a) is Literal for w in get_args(a)]
        if value in words:  # `auto`: a bound the run derives, beside a number
            return value
        try:
            return _coerce(options[0], value, key)
        except ConfigError:
            if not words:
                raise
            raise ConfigError(
                f"{key} must be a {options[0].__name__} or {', '.join(words)}; got {value!r}"
            ) from None
    if origin is list:
        if not isinstance(value, list | tuple):
            value = [value]
        (item,) = get_args(kind)
        return [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    return _scalar(kind, value, key)


def _scalar(kind: type, value: Any, key: str) -> Any:
    accepted = {bool: (bool,), int: (int,), float: (int, float), str: (str, int, float)}[kind]
    if isinstance(value, accepted) and (kind is bool or not isinstance(value, bool)):
        return kind(value)
    raise ConfigError(f"{key} must be a {kind.__name__}; got {value!r}")
