"""Compose a run's config from the Hydra tree the way `flowerbed simulate` does.

Tests, benchmarks and `flowerbed deploy prepare` build configs here, so they run the
same defaults as the command line (`conf/config.yaml`, then the chosen options).
"""

from __future__ import annotations

from flowerbed.config.conf_dir import conf_dir
from flowerbed.config.loader import load_config
from flowerbed.config.schema import FlowerbedConfig


def compose_config(*overrides: str) -> FlowerbedConfig:
    """The validated config for Hydra `overrides` (e.g. `"experiment=smoke"`, `"seed=3"`)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return load_config(compose(config_name="config", overrides=list(overrides)))
