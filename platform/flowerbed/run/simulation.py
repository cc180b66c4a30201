"""A simulated federation on Flower's Simulation Engine, in this process.

`flwr.simulation.run_simulation` runs the same ServerApp and ClientApp as a deployment;
docs/layout.md ("Why run_simulation") says why it is used instead of `flwr run`. Each simulated
node's machine facts (its folders under the run directory, device, threads) come from
`SimulatedNodes`, as a SuperNode's would come from its node config.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import torch

from flowerbed.atomic import write_json_atomic
from flowerbed.config import ConfigError, FlowerbedConfig
from flowerbed.run.prepare import prepare_run
from flowerbed.run.public_base import with_public_base
from flowerbed.server.checkpoint import latest_checkpoint
from flowerbed.server.summary import RunSummary
from flowerbed.tracking import RunLayout


class SimulationFailed(RuntimeError):
    """The federation stopped before its last round; the message says why."""


class SimulationInterrupted(SimulationFailed):
    """The user stopped the run (Ctrl-C, SIGTERM); the message says how to resume it."""


def preflight(cfg: FlowerbedConfig) -> None:
    """What the config cannot know by itself but this machine can: refuse before any work."""
    import importlib.util

    if cfg.tracking.wandb and importlib.util.find_spec("wandb") is None:
        from flowerbed.extras import needs_extra

        raise ConfigError(needs_extra("tracking.wandb=true", "tracking"))
    if not torch.cuda.is_available():
        if cfg.device == "cuda":
            raise ConfigError("device=cuda but no CUDA device is visible here; use device=auto")
        if cfg.federation.client_gpus > 0:
            raise ConfigError(
                f"federation.client_gpus={cfg.federation.client_gpus} but no CUDA device is "
                "visible here; set federation.client_gpus=0"
            )


def simulate(cfg: FlowerbedConfig, run_dir: Path) -> dict:
    """Prepare `run_dir` and run a simulated federation in it; return its summary."""
    preflight(cfg)
    cfg = with_public_base(cfg)
    prepare_run(cfg, RunLayout(run_dir))
    return _run_prepared(cfg, run_dir)


def continue_simulation(cfg: FlowerbedConfig, run_dir: Path) -> dict:
    """Run the federation in an already prepared `run_dir`, after its newest checkpoint.

    Raises:
        ConfigError: the run has completed already; nothing in it is touched.
        SimulationFailed: the ServerApp did not finish (a client error, a crash).
    """
    done = nothing_to_resume(run_dir)
    if done:
        raise ConfigError(done)
    preflight(cfg)
    return _run_prepared(cfg, run_dir)


def nothing_to_resume(run_dir: Path) -> str | None:
    """Why resuming `run_dir` would do nothing, in a sentence (None: it has rounds left)."""
    path = RunLayout(run_dir).summary
    summary = RunSummary.read(path) if path.is_file() else None
    if summary is None or summary.status != "completed":
        return None
    return (
        f"{run_dir} completed all its {summary.rounds} rounds, so there is nothing to "
        f"resume; to train more, start a new run from its model: "
        f"model.pretrained={run_dir}/final_model federation.rounds=<more> (its simulated "
        "clients start new ledgers)"
    )


def _run_prepared(cfg: FlowerbedConfig, run_dir: Path) -> dict:
    import flwr.simulation

    from flowerbed.client.app import make_client_app
    from flowerbed.client.node import SimulatedNodes
    from flowerbed.server.app import make_server_app
    from flowerbed.server.live import LiveStatus

    layout = RunLayout(run_dir)
    if not layout.config.is_file() or not layout.data.is_dir():
        raise FileNotFoundError(
            f"{run_dir} is not a prepared flowerbed run directory (no config.yaml or data/)"
        )
    if layout.summary.is_file():
        write_json_atomic(layout.summary, {"status": "running"}, durable=True)
    _quiet_flower(cfg.tracking.verbose)
    fed = cfg.federation
    threads = max(1, int(fed.client_cpus))
    nodes = SimulatedNodes(
        run_dir.resolve(), cfg.device, threads, cfg.node_policy, cfg.faults, fed.ranks_per_client
    )
    stop = threading.Event()
    live = LiveStatus.for_terminal(fed.rounds, cfg.tracking.progress)
    with stopped_by_signals(stop):
        try:
            flwr.simulation.run_simulation(
                server_app=make_server_app(cfg, run_dir, stop, live),
                client_app=make_client_app(nodes.node),
                num_supernodes=fed.num_clients,
                backend_config={
                    "client_resources": {
                        "num_cpus": fed.client_cpus,
                        "num_gpus": fed.client_gpus,
                    },
                    "init_args": {
                        **({"address": fed.ray_address} if fed.ray_address else {}),
                        "log_to_driver": cfg.tracking.verbose,
                        "include_dashboard": False,
                        "logging_level": "INFO" if cfg.tracking.verbose else "ERROR",
                    },
                },
                verbose_logging=cfg.tracking.verbose,
            )
        except KeyboardInterrupt:
            raise _interrupted(layout) from None
    summary = json.loads(layout.summary.read_text()) if layout.summary.is_file() else {}
    if summary.get("status") != "completed":
        raise SimulationFailed(
            f"the federation in {run_dir} did not complete (see the error above and "
            f"{run_dir}/simulate.log); continue it with resume={run_dir}"
        )
    return summary


@contextlib.contextmanager
def stopped_by_signals(stop: threading.Event) -> Iterator[None]:
    """Ctrl-C or SIGTERM sets `stop` (the ServerApp's Grid stops waiting, the federation
    records itself as interrupted) and raises KeyboardInterrupt in the main thread, which
    ends Flower's simulation loop. The Ray workers a terminal's Ctrl-C also reaches die
    with it; their errors are not news, so Flower and Ray go quiet."""

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()
        for name in ("flwr", "ray"):
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)
        raise KeyboardInterrupt

    before = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, previous in before.items():
            signal.signal(s, previous)


def _interrupted(layout: RunLayout) -> SimulationInterrupted:
    """Wait for the ServerApp to record the interruption; the error that says how to go on.

    Flower's simulation threads may still wait, without a timeout, on Ray actors the
    signal ended, and `ray.shutdown()` under them kills the process; so the caller ends
    the process (`os._exit`, as `flowerbed simulate` does), and Ray's own processes,
    which share the driver's fate, go with it."""
    deadline = time.monotonic() + 120  # its callbacks close: the checkpoint writer finishes
    while time.monotonic() < deadline and _status(layout) not in ("interrupted", "failed"):
        time.sleep(0.2)
    resume = f"flowerbed simulate resume={layout.root}"
    if layout.summary.is_file():
        summary = dataclasses.replace(RunSummary.read(layout.summary), resume=resume)
        write_json_atomic(layout.summary, summary.as_dict(), durable=True)
    done = latest_checkpoint(layout.checkpoints)
    after = f"after round {int(done.name.split('-')[-1])}" if done else "before round 1"
    return SimulationInterrupted(f"interrupted {after}; resume with: {resume}")


def _status(layout: RunLayout) -> str | None:
    return RunSummary.read(layout.summary).status if layout.summary.is_file() else None


def _quiet_flower(verbose: bool) -> None:
    """One line per round unless asked: Flower's per-message logs and Ray's tips go quiet.

    Client failures still show: the round engine logs each one itself.
    """
    if verbose:
        return
    import warnings

    from transformers.utils import logging as hf_logging

    logging.getLogger("flwr").setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO.*")
