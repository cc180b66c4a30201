"""A simulated federation on Flower's Simulation Engine, in this process.

`flwr.simulation.run_simulation` runs the same ServerApp and ClientApp as a deployment;
README ("Why run_simulation") says why it is used instead of `flwr run`. Each simulated
node's machine facts (its folders under the run directory, device, threads) come from
`SimulatedNodes`, as a SuperNode's would come from its node config.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from flowerbed.atomic import write_json_atomic
from flowerbed.config import ConfigError, FlowerbedConfig
from flowerbed.run.prepare import prepare_run
from flowerbed.tracking import RunLayout


class SimulationFailed(RuntimeError):
    """The federation stopped before its last round; the message says why."""


def preflight(cfg: FlowerbedConfig) -> None:
    """What the config cannot know by itself but this machine can: refuse before any work."""
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
    summary = RunLayout(run_dir).summary
    if not summary.is_file():
        return None
    facts = json.loads(summary.read_text())
    if facts.get("status") != "completed":
        return None
    return (
        f"{run_dir} completed all its {facts.get('rounds')} rounds, so there is nothing to "
        f"resume; to train more, start a new run from its model: "
        f"model.pretrained={run_dir}/final_model federation.rounds=<more> (its simulated "
        "clients start new ledgers)"
    )


def _run_prepared(cfg: FlowerbedConfig, run_dir: Path) -> dict:
    import flwr.simulation

    from flowerbed.client.app import make_client_app
    from flowerbed.client.node import SimulatedNodes
    from flowerbed.server.app import make_server_app

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
    nodes = SimulatedNodes(run_dir.resolve(), cfg.device, threads, cfg.node_policy, cfg.faults)
    flwr.simulation.run_simulation(
        server_app=make_server_app(cfg, run_dir),
        client_app=make_client_app(nodes.node),
        num_supernodes=fed.num_clients,
        backend_config={
            "client_resources": {"num_cpus": fed.client_cpus, "num_gpus": fed.client_gpus},
            "init_args": {
                "log_to_driver": cfg.tracking.verbose,
                "include_dashboard": False,
                "logging_level": "INFO" if cfg.tracking.verbose else "ERROR",
            },
        },
        verbose_logging=cfg.tracking.verbose,
    )
    summary = json.loads(layout.summary.read_text()) if layout.summary.is_file() else {}
    if summary.get("status") != "completed":
        raise SimulationFailed(
            f"the federation in {run_dir} did not complete (see the error above and "
            f"{run_dir}/simulate.log); continue it with resume={run_dir}"
        )
    return summary


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
