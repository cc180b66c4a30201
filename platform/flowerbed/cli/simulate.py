"""`flowerbed simulate`: compose the config with Hydra, prepare data, run the federation.

The federation runs on Flower's Simulation Engine through `flwr.simulation.run_simulation`
(in process): README ("Why run_simulation") says why instead of `flwr run`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from flowerbed.cli.conf_dir import conf_dir
from flowerbed.config import ConfigError, FlowerbedConfig, load_config, to_plain_dict
from flowerbed.continual.stream import experience_dir
from flowerbed.data import DataError, load_tokenizer, prepare_splits
from flowerbed.tracking import RunLayout

log = logging.getLogger("flowerbed")
USER_ERRORS = (ConfigError, DataError, FileNotFoundError)


class SimulationFailed(RuntimeError):
    """The federation stopped before its last round; the message says why."""


def prepare_run(cfg: FlowerbedConfig, layout: RunLayout, client_shards: bool = True) -> None:
    """Write the resolved config, tokenizer, validation split and (unless told not to, as
    for a deployment's coordinator, who holds no institution's data) every client's shard."""
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.config.write_text(OmegaConf.to_yaml(to_plain_dict(cfg)))
    tokenizer = load_tokenizer(cfg.data.tokenizer, cfg.model.pretrained)
    continual = cfg.continual
    experiences = continual.experiences if continual.mode != "off" else 1
    splits = prepare_splits(
        cfg.data, tokenizer, cfg.federation.num_clients, cfg.seed, experiences, continual.split
    )
    tokenizer.save_pretrained(layout.tokenizer)
    splits.validation.save(layout.data, "validation")
    if not client_shards:
        return
    for partition_id, shards in enumerate(splits.clients):
        data_dir = layout.client_data(partition_id)
        if continual.mode == "off":
            shards[0].save(data_dir)
        else:
            for k, shard in enumerate(shards):
                shard.save(experience_dir(data_dir, k))


def simulate(cfg: FlowerbedConfig, run_dir: Path, resume: bool = False) -> dict:
    """Run a simulated federation into `run_dir`; return its summary.

    Raises:
        SimulationFailed: the ServerApp did not finish (a client error, a crash).
    """
    import flwr.simulation

    from flowerbed.client.app import app as client_app
    from flowerbed.server.app import make_server_app
    from flowerbed.tracking.metrics import write_json_atomic

    layout = RunLayout(run_dir)
    if resume:
        if not layout.config.is_file() or not layout.data.is_dir():
            raise FileNotFoundError(
                f"resume={run_dir} is not a flowerbed run directory (no config.yaml or data/)"
            )
    else:
        prepare_run(cfg, layout)
    if layout.summary.is_file():
        write_json_atomic(layout.summary, {"status": "running"})
    _quiet_flower(cfg.tracking.verbose)
    fed = cfg.federation
    flwr.simulation.run_simulation(
        server_app=make_server_app(cfg, run_dir),
        client_app=client_app,
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
    summary = _read_summary(layout)
    if summary.get("status") != "completed":
        raise SimulationFailed(
            f"the federation in {run_dir} did not complete (see the error above and "
            f"{run_dir}/simulate.log); continue it with resume={run_dir}"
        )
    return summary


def _read_summary(layout: RunLayout) -> dict:
    import json

    return json.loads(layout.summary.read_text()) if layout.summary.is_file() else {}


def _quiet_flower(verbose: bool) -> None:
    """One line per round unless asked: Flower's per-message logs and Ray's tips go quiet.

    Client failures still show: the round loop logs each one itself.
    """
    if verbose:
        return
    import warnings

    from transformers.utils import logging as hf_logging

    logging.getLogger("flwr").setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO.*")


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
def hydra_simulate(node: DictConfig) -> float:
    """Hydra's task: returns the final validation loss, so sweepers can minimise it."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        if node.get("resume"):
            run_dir = Path(str(node.resume)).expanduser()
            cfg = load_config(run_dir / "config.yaml")
            summary = simulate(cfg, run_dir, resume=True)
        else:
            cfg = load_config(node)
            summary = simulate(cfg, run_dir)
    except (*USER_ERRORS, SimulationFailed) as err:
        log.error("%s", err)
        sys.exit(1)
    log.info(
        "done: final val loss %.4f (ppl %.1f); outputs in %s",
        summary["final_val_loss"],
        summary["final_val_perplexity"],
        run_dir,
    )
    return float(summary["final_val_loss"])
