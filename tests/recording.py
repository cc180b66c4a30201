"""A simulated federation whose Grid keeps every Message it sends and every reply it gets.

Tests read what actually crossed the wire: Message types per round, and the replies'
metrics and arrays (to prove what a client did, or did not, release).
"""

from __future__ import annotations

from pathlib import Path

from flowerbed.config import FlowerbedConfig


class RecordingGrid:
    """Flower's Grid, noting every Message sent and every reply received."""

    def __init__(self, grid) -> None:
        self.grid, self.sent, self.received = grid, [], []

    def __getattr__(self, name: str):
        return getattr(self.grid, name)

    def send_and_receive(self, messages, timeout=None):
        messages = list(messages)
        self.sent.append(sorted(m.metadata.message_type for m in messages))
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        self.received.extend(replies)
        return replies


def recorded_simulation(cfg: FlowerbedConfig, run_dir: Path, node_of=None) -> RecordingGrid:
    """Run `cfg` in the prepared `run_dir` through Flower's Simulation Engine; return the
    Grid's record. `node_of` replaces the simulated nodes' machine facts (a policy, say)."""
    import flwr.simulation
    from flwr.serverapp import ServerApp

    from flowerbed.client.app import make_client_app
    from flowerbed.client.node import SimulatedNodes
    from flowerbed.server.federation import run_federation

    grids: list[RecordingGrid] = []
    server_app = ServerApp()

    @server_app.main()
    def _main(grid, context) -> None:
        grids.append(RecordingGrid(grid))
        run_federation(grids[0], cfg, run_dir)

    nodes = node_of or SimulatedNodes(run_dir, "cpu", 1, cfg.node_policy, cfg.faults).node
    flwr.simulation.run_simulation(
        server_app=server_app,
        client_app=make_client_app(nodes),
        num_supernodes=cfg.federation.num_clients,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0}},
    )
    return grids[0]
