"""A single run's overrides, checked before Hydra makes the run's folder.

Hydra creates the output folder before the task runs, so a config refused inside the task
would leave a folder behind with nothing but Hydra's files. Composing the same overrides
here first means a refusal leaves nothing, and a mistyped key gets the keys it might have
meant instead of Hydra's advice to append it with `+`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from pathlib import Path

from omegaconf import DictConfig

from flowerbed.config import ConfigError

UNKNOWN_KEY = re.compile(r"Could not override '([^']+)'")


def precheck(args: list[str]) -> str | None:
    """Why `flowerbed simulate args` would be refused, in a sentence (None: go on; a
    sweep, a resume or Hydra's own flags are Hydra's to check)."""
    from flowerbed.extras import missing_extra
    from flowerbed.run.simulation import nothing_to_resume, preflight

    missing = missing_extra(args)
    if missing:
        return missing
    run = _resumed(args)
    if run is not None:
        return nothing_to_resume(Path(run).expanduser())
    if any(a.startswith("-") for a in args):
        return None
    overrides = [a for a in args if not a.startswith(("hydra.", "+hydra."))]
    from hydra.errors import ConfigCompositionException

    from flowerbed.config import compose_config

    try:
        preflight(compose_config(*overrides))
    except ConfigError as err:
        return str(err)
    except ConfigCompositionException as err:
        unknown = UNKNOWN_KEY.search(str(err))
        return unknown_key(unknown.group(1)) if unknown else None
    return None


def resuming(args: list[str]) -> list[str]:
    """For `resume=RUN`, the Hydra overrides that log into RUN itself, not a new folder
    (unless the user chose a folder)."""
    run = _resumed(args)
    if run is None or any(a.startswith("hydra.run.dir=") for a in args):
        return []
    return [f"hydra.run.dir={run}", "hydra.output_subdir=null"]


def _resumed(args: list[str]) -> str | None:
    """The run `resume=` names (None: a new run)."""
    return next((a.removeprefix("resume=") for a in args if a.startswith("resume=")), None)


def unknown_key(key: str) -> str:
    """A sentence for a key the config does not have, with the closest ones it does."""
    known = list(_keys(_defaults()))
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}?" if close else "see conf/config.yaml"
    return f"the config has no key {key}: {hint}"


def _defaults() -> DictConfig:
    from hydra import compose, initialize_config_dir

    from flowerbed.config.conf_dir import conf_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="config")


def _keys(node: DictConfig, prefix: str = "") -> Iterator[str]:
    for key, value in node.items():
        name = f"{prefix}{key!s}"
        yield name
        if isinstance(value, DictConfig):
            yield from _keys(value, f"{name}.")
