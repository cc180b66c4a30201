"""Typed configuration: the schema every run is validated against, and its loader."""

from flowerbed.config.loader import ConfigError, load_config, to_plain_dict
from flowerbed.config.schema import (
    DataConfig,
    FederationConfig,
    FlowerbedConfig,
    ModelConfig,
    StrategyConfig,
    TrackingConfig,
    TrainConfig,
)

__all__ = [
    "ConfigError",
    "DataConfig",
    "FederationConfig",
    "FlowerbedConfig",
    "ModelConfig",
    "StrategyConfig",
    "TrackingConfig",
    "TrainConfig",
    "load_config",
    "to_plain_dict",
]
