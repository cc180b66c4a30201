"""What the server asks of its clients each round, from the run's config and global model."""

from __future__ import annotations

import torch

from flowerbed.config import FlowerbedConfig
from flowerbed.model.adapter import base_fingerprint
from flowerbed.model.factory import architecture_of
from flowerbed.privacy.modes import privacy_mode
from flowerbed.protocol import EvaluateInstructions, ModelSpec, TrainInstructions


def model_spec(cfg: FlowerbedConfig, model: torch.nn.Module) -> ModelSpec:
    """How clients build the global model; call it before adapters are added, on the base."""
    if not cfg.adapter.enabled:
        return ModelSpec(architecture_of(model), cfg.adapter)
    return ModelSpec(
        architecture_of(model),
        cfg.adapter,
        base_source=cfg.model.pretrained,
        base_seed=cfg.seed,
        base_hash=base_fingerprint(model),
    )


def train_instructions(cfg: FlowerbedConfig, spec: ModelSpec, round_: int) -> TrainInstructions:
    return TrainInstructions(
        round=round_,
        total_rounds=cfg.federation.rounds,
        seed=cfg.seed,
        model=spec,
        transport_dtype=cfg.federation.transport_dtype,
        arrival_every=cfg.continual.arrival_interval(cfg.federation.rounds),
        uniform_weights=privacy_mode(cfg.privacy).uniform_weights,
        keep_inner_state=cfg.strategy.keep_inner_state,
        evaluate_incoming=False,  # asked per node: protocol.ask_heldout
        train=cfg.train,
        privacy=cfg.privacy,
        continual=cfg.continual,
        secure_max_weight=(
            cfg.secagg.max_weight if cfg.federation.secure_aggregation != "off" else None
        ),
    )


def evaluate_instructions(
    cfg: FlowerbedConfig, spec: ModelSpec, round_: int
) -> EvaluateInstructions:
    return train_instructions(cfg, spec, round_).evaluation(round_)
