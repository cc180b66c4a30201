"""The machine a ClientApp runs on: its data and state directories, device and threads.

The server never sends these. A deployed SuperNode names them in its node config
(`--node-config "partition-id=0 data-dir='...' state-dir='...' device='cuda' threads=8"`);
a simulated node takes its partition's folders under the run directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from flwr.app import Context

from flowerbed.model.runtime import resolve_device
from flowerbed.tracking.layout import RunLayout


class NodeConfigError(ValueError):
    """The SuperNode's node config lacks a setting; the message names it."""


@dataclass(frozen=True)
class Node:
    partition_id: int
    data_dir: Path
    """The prepared shard, or one folder per experience."""
    state_dir: Path
    """What outlives a Message: the privacy ledger and the continual state."""
    device: str
    """auto, cpu or cuda."""
    threads: int
    """CPU threads for torch; 0 leaves torch's default."""
    base_model: str | None = None
    """Adapters: where this node keeps the pretrained base (default: the server's path)."""

    @classmethod
    def from_context(cls, context: Context) -> Node:
        """A deployed SuperNode: everything from its `--node-config`."""
        config = context.node_config
        for key in ("data-dir", "state-dir"):
            if key not in config:
                raise NodeConfigError(
                    f"the SuperNode's --node-config has no {key}: start it with "
                    "data-dir='<its prepared shard>' and state-dir='<its own folder>'"
                )
        return cls(
            partition_id=int(config.get("partition-id", 0)),
            data_dir=Path(str(config["data-dir"])).expanduser(),
            state_dir=Path(str(config["state-dir"])).expanduser(),
            device=str(config.get("device", "auto")),
            threads=int(config.get("threads", 0)),
            base_model=str(config["base-model"]) if "base-model" in config else None,
        )

    def torch_device(self) -> torch.device:
        """The device to compute on; also gives torch this node's share of the cores."""
        if self.threads > 0:
            torch.set_num_threads(self.threads)
        return resolve_device(self.device)


@dataclass(frozen=True)
class SimulatedNodes:
    """The per-node config of a simulation: partition i's folders under the run directory."""

    run_dir: Path
    device: str
    threads: int

    def node(self, context: Context) -> Node:
        partition_id = int(context.node_config["partition-id"])
        layout = RunLayout(self.run_dir)
        return Node(
            partition_id=partition_id,
            data_dir=layout.client_data(partition_id),
            state_dir=layout.client_state(partition_id),
            device=self.device,
            threads=self.threads,
        )
