"""`flowerbed simulate`: compose the config with Hydra, check it, run the federation.

The work is `flowerbed.run.simulation`; this module is Hydra's entry point. A single run
turns a user's mistake into one sentence and a non-zero exit; in a sweep (`-m`) a job
that fails is recorded and the sweep goes on (`cli.sweep`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from flowerbed.cli.sweep import in_sweep_group, pin_gpu, record_outcome
from flowerbed.config import ConfigError, load_config
from flowerbed.config.conf_dir import conf_dir
from flowerbed.data import DataError
from flowerbed.run.simulation import (
    SimulationFailed,
    SimulationInterrupted,
    continue_simulation,
    simulate,
)
from flowerbed.server.replies import FederationError, NothingToTrain

log = logging.getLogger("flowerbed")
USER_ERRORS = (ConfigError, DataError, FileNotFoundError, SimulationFailed, FederationError)
REFUSALS = (ConfigError, DataError, FileNotFoundError)
"""Errors that refuse a run before its first round (a bad value, an empty or binary file)."""
fresh_folder = False
"""Set by `flowerbed simulate` when Hydra's run folder is made for this invocation (no
`hydra.run.dir=` of an existing folder): a refused run may then take it away again."""


def discard_refused(run_dir: Path) -> None:
    """A refused run leaves no folder: remove the one Hydra made for it, unless a round
    left something in it (metrics, a checkpoint), and `runs/<name>/` and `runs/` when
    they are left empty (only below the working directory)."""
    if not fresh_folder or any((run_dir / p).exists() for p in ("metrics.jsonl", "checkpoints")):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    here = Path.cwd().resolve()
    for parent in run_dir.resolve().parents:
        if parent == here or here not in parent.parents:
            break
        with contextlib.suppress(OSError):
            parent.rmdir()


def ignored_by_resume(overrides: list[str]) -> list[str]:
    """The overrides a `resume=` run would ignore (it continues with its saved config)."""
    return [o for o in overrides if not o.startswith(("resume=", "hydra.", "+hydra."))]


def run(node: DictConfig, run_dir: Path) -> tuple[dict, Path]:
    """A new run in `run_dir`, or the continuation of the run `resume=` names."""
    hydra_cfg = HydraConfig.get()
    if node.get("resume"):
        ignored = ignored_by_resume(list(hydra_cfg.overrides.task))
        if ignored:
            raise ConfigError(
                f"resume= continues a run with its saved config.yaml, so it would ignore "
                f"{', '.join(ignored)}: drop them (or start a new run with them)"
            )
        run_dir = Path(str(node.resume)).expanduser()
        return continue_simulation(load_config(run_dir / "config.yaml"), run_dir), run_dir
    cfg = load_config(node)
    if hydra_cfg.mode == RunMode.MULTIRUN:
        cfg = in_sweep_group(cfg, hydra_cfg.sweep.dir)
    return simulate(cfg, run_dir), run_dir


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
def hydra_simulate(node: DictConfig) -> float:
    """Hydra's task: returns the final validation loss, so sweepers can minimise it."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    if in_sweep:
        pin_gpu(int(hydra_cfg.job.num), int(hydra_cfg.launcher.get("n_jobs") or 1))
    try:
        summary, run_dir = run(node, run_dir)
    except SimulationInterrupted as err:
        log.warning("%s", err)
        # The summary is written and Ray is shut down, but Flower's simulation threads
        # may still wait, without a timeout, on actors that are gone: end the process.
        logging.shutdown()
        os._exit(130)  # as a shell reports a run stopped by Ctrl-C
    except KeyboardInterrupt:
        log.warning("interrupted before the federation started; nothing to resume")
        sys.exit(130)
    except NothingToTrain as err:
        if not in_sweep:
            log.error("%s", err)
            sys.exit(1)
        return record_outcome(run_dir, "infeasible", err)
    except USER_ERRORS as err:
        if not in_sweep:
            log.error("%s", err)
            if isinstance(err, REFUSALS) and not node.get("resume"):
                discard_refused(run_dir)
            sys.exit(1)
        return record_outcome(run_dir, "failed", err)
    except Exception as err:
        if not in_sweep:
            raise
        log.exception("sweep job %s crashed", hydra_cfg.job.num)
        return record_outcome(run_dir, "failed", err)
    log.info(
        "done: final val loss %.4f (ppl %.1f); outputs in %s",
        summary["final_val_loss"],
        summary["final_val_perplexity"],
        run_dir,
    )
    return float(summary["final_val_loss"])
