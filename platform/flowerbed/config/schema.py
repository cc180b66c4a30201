"""The whole run's config: the sections, the top-level keys, and the rules that span sections.

Every default is in `conf/config.yaml`, once; a test composes every option and checks
that the YAML tree and this schema name the same keys, so the two cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from flowerbed.config import sections
from flowerbed.config.modes import ContinualConfig, PrivacyConfig
from flowerbed.config.node_policy import NodePolicyConfig
from flowerbed.config.rules import require

DeviceName = Literal["auto", "cpu", "cuda"]


@dataclass
class FlowerbedConfig:
    """A whole run: what `flowerbed simulate` composes with Hydra and validates."""

    model: sections.ModelConfig
    adapter: sections.AdapterConfig
    data: sections.DataConfig
    federation: sections.FederationConfig
    train: sections.TrainConfig
    strategy: sections.StrategyConfig
    privacy: PrivacyConfig
    node_policy: NodePolicyConfig
    continual: ContinualConfig
    tracking: sections.TrackingConfig
    name: str
    """A label for the run (experiment files set it)."""
    seed: int
    device: DeviceName
    """auto: CUDA with bf16 autocast when a GPU is visible, else CPU."""
    resume: str | None
    """A run directory to continue from its newest round checkpoint."""

    def __post_init__(self) -> None:
        require(
            not (
                self.privacy.mode == "dp_sgd"
                and self.privacy.grad_sample_mode in ("ghost", "bookkeeping")
                and self.model.tie_embeddings
            ),
            f"privacy.grad_sample_mode={self.privacy.grad_sample_mode} cannot train tied "
            "embeddings: set model.tie_embeddings=false or privacy.grad_sample_mode=hooks",
        )
        continual = self.continual
        require(
            not continual.enabled or self.federation.fraction_evaluate > 0,
            "continual learning measures forgetting with the clients' held-out losses: "
            "set federation.fraction_evaluate > 0",
        )
        every = continual.arrival_interval(self.federation.rounds)
        if every:
            last_arrival = 1 + (continual.experiences - 1) * every
            require(
                last_arrival <= self.federation.rounds,
                f"continual: experience {continual.experiences} would arrive in round "
                f"{last_arrival}, after the last round ({self.federation.rounds}): raise "
                "federation.rounds or lower continual.experiences or continual.arrival_every",
            )
        require(
            self.privacy.mode != "user_level" or self.federation.transport_dtype == "fp32",
            "privacy=user_level clips and noises updates in fp32: "
            "set federation.transport_dtype=fp32",
        )
