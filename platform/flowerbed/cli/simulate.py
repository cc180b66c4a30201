"""`flowerbed simulate`: compose the config with Hydra, check it, run the federation.

The work is `flowerbed.run.simulation`; this module is Hydra's entry point and turns a
user's mistake into one sentence and a non-zero exit.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from flowerbed.config import ConfigError, load_config
from flowerbed.config.conf_dir import conf_dir
from flowerbed.data import DataError
from flowerbed.run.simulation import SimulationFailed, continue_simulation, simulate

log = logging.getLogger("flowerbed")
USER_ERRORS = (ConfigError, DataError, FileNotFoundError, SimulationFailed)


def ignored_by_resume(overrides: list[str]) -> list[str]:
    """The overrides a `resume=` run would ignore (it continues with its saved config)."""
    return [o for o in overrides if not o.startswith(("resume=", "hydra.", "+hydra."))]


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
def hydra_simulate(node: DictConfig) -> float:
    """Hydra's task: returns the final validation loss, so sweepers can minimise it."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        if node.get("resume"):
            ignored = ignored_by_resume(list(HydraConfig.get().overrides.task))
            if ignored:
                raise ConfigError(
                    f"resume= continues a run with its saved config.yaml, so it would ignore "
                    f"{', '.join(ignored)}: drop them (or start a new run with them)"
                )
            run_dir = Path(str(node.resume)).expanduser()
            summary = continue_simulation(load_config(run_dir / "config.yaml"), run_dir)
        else:
            summary = simulate(load_config(node), run_dir)
    except USER_ERRORS as err:
        log.error("%s", err)
        sys.exit(1)
    log.info(
        "done: final val loss %.4f (ppl %.1f); outputs in %s",
        summary["final_val_loss"],
        summary["final_val_perplexity"],
        run_dir,
    )
    return float(summary["final_val_loss"])
