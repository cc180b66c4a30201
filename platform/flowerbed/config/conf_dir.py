"""Find the Hydra config tree: the checkout's conf/, or the copy shipped in the wheel."""

from __future__ import annotations

import os
from pathlib import Path

import flowerbed


def conf_dir() -> Path:
    """`$FLOWERBED_CONF`, else `<repo>/conf` next to `platform/`, else `flowerbed/conf`."""
    if "FLOWERBED_CONF" in os.environ:
        return Path(os.environ["FLOWERBED_CONF"]).resolve()
    package = Path(flowerbed.__file__).resolve().parent
    for candidate in (package.parents[1] / "conf", package / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError("flowerbed's conf/ tree was not found; set FLOWERBED_CONF")
