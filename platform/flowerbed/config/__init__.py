"""Typed configuration: the schema every run is validated against, and how it is composed."""

from flowerbed.config.compose import compose_config
from flowerbed.config.federation import FederationConfig
from flowerbed.config.loader import ConfigError, load_config, to_plain_dict
from flowerbed.config.modes import ContinualConfig, PrivacyConfig
from flowerbed.config.node_policy import NodePolicyConfig
from flowerbed.config.schema import FlowerbedConfig
from flowerbed.config.sections import (
    AdapterConfig,
    DataConfig,
    ModelConfig,
    StrategyConfig,
    TrackingConfig,
    TrainConfig,
    TransportDtype,
)

__all__ = [
    "AdapterConfig",
    "ConfigError",
    "ContinualConfig",
    "DataConfig",
    "FederationConfig",
    "FlowerbedConfig",
    "ModelConfig",
    "NodePolicyConfig",
    "PrivacyConfig",
    "StrategyConfig",
    "TrackingConfig",
    "TrainConfig",
    "TransportDtype",
    "compose_config",
    "load_config",
    "to_plain_dict",
]
