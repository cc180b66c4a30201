"""The machine a ClientApp runs on: its directories, device, threads and privacy policy.

The server never sends these. A deployed SuperNode names them in its node config
(`--node-config "partition-id=0 data-dir='...' state-dir='...' device='cuda' ranks='auto'
threads=8 max-epsilon=4"`); a simulated node takes its partition's folders under the run
directory and the run's `node_policy`.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
from flwr.app import Context

from flowerbed.config import NodePolicyConfig
from flowerbed.config.node_policy import NODE_CONFIG_KEYS, policy_from_node_config
from flowerbed.config.robustness import FaultsConfig
from flowerbed.config.rules import SchemaError
from flowerbed.model.runtime import resolve_device
from flowerbed.tracking.layout import RunLayout

NODE_KEYS = {
    "partition-id",
    "data-dir",
    "state-dir",
    "device",
    "threads",
    "ranks",
    "base-model",
    "ledger-mirror-dir",
}
"""The node-config keys that describe the machine (the policy's are `NODE_CONFIG_KEYS`)."""


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
    policy: NodePolicyConfig
    """The weakest privacy the institution accepts, and what it lets leave the node."""
    deployed: bool
    """A real SuperNode: it refuses noise the server could reproduce (noise_seed=run)."""
    base_model: str | None = None
    """Adapters: where this node keeps the pretrained base (default: the server's path)."""
    faults: FaultsConfig | None = None
    """Simulation only: how this node misbehaves on purpose (`client/faults.py`)."""
    ranks: int = 1
    """Processes a round trains on (data parallel, `client/ranked_round.py`); on GPUs one
    per device."""
    mirror_dir: Path | None = None
    """Where the ledger's mirror lives, outside the state directory so that restoring an
    old backup of it cannot make the node forget releases (None: beside the state
    directory)."""

    def ledger_mirror(self) -> Path:
        """The mirror of this node's ledger, named by its host and data directory: a new
        or restored state directory for the same data finds it."""
        folder = self.mirror_dir or self.state_dir.parent
        where = f"{socket.gethostname()}:{self.data_dir.resolve()}".encode()
        return folder / f"ledger-mirror-{hashlib.sha256(where).hexdigest()[:24]}.json"

    @classmethod
    def from_context(cls, context: Context) -> Node:
        """A deployed SuperNode: everything from its `--node-config`."""
        config = context.node_config
        unknown = sorted(set(config) - NODE_KEYS - set(NODE_CONFIG_KEYS))
        if unknown:
            known = sorted(NODE_KEYS | set(NODE_CONFIG_KEYS))
            close = difflib.get_close_matches(unknown[0].replace("_", "-"), known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise NodeConfigError(
                f"the SuperNode's --node-config has {unknown[0]!r}, which no node reads"
                f"{hint}: a key it ignored would leave the node on its defaults; the keys "
                f"are {', '.join(known)}"
            )
        for key in ("data-dir", "state-dir"):
            if key not in config:
                raise NodeConfigError(
                    f"the SuperNode's --node-config has no {key}: start it with "
                    "data-dir='<its prepared shard>' and state-dir='<its own folder>'"
                )
        try:
            policy = policy_from_node_config(config)
        except SchemaError as err:
            raise NodeConfigError(str(err)) from None
        return cls(
            partition_id=int(config.get("partition-id", 0)),
            data_dir=Path(str(config["data-dir"])).expanduser(),
            state_dir=Path(str(config["state-dir"])).expanduser(),
            device=str(config.get("device", "auto")),
            threads=int(config.get("threads", 0)),
            policy=policy,
            deployed=True,
            base_model=str(config["base-model"]) if "base-model" in config else None,
            ranks=ranks_of(config.get("ranks", 1), str(config.get("device", "auto"))),
            mirror_dir=Path(str(config.get("ledger-mirror-dir", default_mirror_dir()))),
        )

    def torch_device(self) -> torch.device:
        """The device to compute on; also gives torch this node's share of the cores."""
        if self.threads > 0:
            torch.set_num_threads(self.threads)
        return resolve_device(self.device)


def default_mirror_dir() -> Path:
    """A deployed node's ledger mirrors: `$XDG_STATE_HOME/flowerbed`, else ~/.local/state."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "flowerbed"


def ranks_of(value: object, device: str) -> int:
    """A node config's `ranks`: a count, or `auto` (every visible GPU; one on CPU)."""
    gpus = torch.cuda.device_count() if resolve_device(device).type == "cuda" else 0
    if value == "auto":
        return max(gpus, 1)
    try:
        ranks = int(str(value))
    except ValueError:
        ranks = 0
    if ranks < 1:
        raise NodeConfigError(
            f"ranks={value!r} is not a count of ranks: give 1 or more, or ranks='auto' "
            "(one rank per visible GPU)"
        )
    if gpus and ranks > gpus:
        raise NodeConfigError(
            f"the SuperNode's --node-config asks for ranks={ranks} but {gpus} GPU(s) are "
            "visible: one rank per GPU, so lower ranks or use ranks='auto'"
        )
    return ranks


@dataclass(frozen=True)
class SimulatedNodes:
    """The per-node config of a simulation: partition i's folders under the run directory,
    and the run's `node_policy` (for the clients it names)."""

    run_dir: Path
    device: str
    threads: int
    policy: NodePolicyConfig
    faults: FaultsConfig | None = None
    ranks: int = 1

    def node(self, context: Context) -> Node:
        partition_id = int(context.node_config["partition-id"])
        layout = RunLayout(self.run_dir)
        return Node(
            partition_id=partition_id,
            data_dir=layout.client_data(partition_id),
            state_dir=layout.client_state(partition_id),
            device=self.device,
            threads=self.threads,
            policy=self.policy.demands_of(partition_id),
            deployed=False,
            faults=self.faults,
            ranks=self.ranks,
        )
