"""What one Message asks of a client, decoded once: its config, its data and its device."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from flwr.app import ConfigRecord, Context

from flowerbed.config.loader import build_dataclass
from flowerbed.config.schema import ContinualConfig, PrivacyConfig, TrainConfig
from flowerbed.model.runtime import resolve_device


@dataclass
class ClientJob:
    """The server's instructions for one round plus this node's own settings."""

    round: int
    total_rounds: int
    partition_id: int
    seed: int
    train: TrainConfig
    privacy: PrivacyConfig
    continual: ContinualConfig
    experience_every: int
    """Rounds between experience arrivals (simulation's schedule); 0: every folder present."""
    model_config: dict
    transport_dtype: str
    data_dir: Path
    state_dir: Path
    """Where the client keeps what outlives a Message: its privacy ledger, for one."""
    device: torch.device
    threads: int
    """CPU threads for torch (the simulated client's core share); 0 leaves torch's default."""

    @classmethod
    def from_message(cls, config: ConfigRecord, context: Context) -> ClientJob:
        """Read the round's ConfigRecord and the node config (`partition-id`, `data-dir`).

        In simulation the server names a clients folder and each virtual node takes its
        partition's sub-folder; a deployed SuperNode names its own `data-dir`.
        """
        node = context.node_config
        partition_id = int(node.get("partition-id", 0))
        own = Path(str(config.get("clients-dir", ""))) / f"client-{partition_id}"
        data_dir = Path(str(node.get("data-dir", own / "data"))).expanduser()
        state_dir = Path(str(node.get("state-dir", own / "state"))).expanduser()
        return cls(
            round=int(config["server-round"]),
            total_rounds=int(config["total-rounds"]),
            partition_id=partition_id,
            seed=int(config["seed"]),
            train=build_dataclass(TrainConfig, json.loads(str(config["train-config"])), "train."),
            privacy=build_dataclass(
                PrivacyConfig, json.loads(str(config["privacy-config"])), "privacy."
            ),
            continual=build_dataclass(
                ContinualConfig, json.loads(str(config["continual-config"])), "continual."
            ),
            experience_every=int(config["experience-every"]),
            model_config=json.loads(str(config["model-config"])),
            transport_dtype=str(config["transport-dtype"]),
            data_dir=data_dir,
            state_dir=state_dir,
            threads=int(config.get("threads", 0)),
            device=resolve_device(str(node.get("device", config.get("device", "auto")))),
        )
