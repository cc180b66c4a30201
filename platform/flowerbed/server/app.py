"""The Flower ServerApp: load the run's resolved config and run the federation.

Deployment (`flwr run`) hands the app `config-path` in its run config: the YAML that
`flowerbed` resolved and wrote into the run directory. Simulation builds the same app
around an already loaded config with `make_server_app`.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from flowerbed.config import FlowerbedConfig, load_config
from flowerbed.server.federation import run_federation
from flowerbed.server.live import LiveStatus
from flowerbed.server.stoppable import StoppableGrid

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config_path = str(context.run_config.get("config-path", ""))
    if not config_path:
        raise ValueError("run config `config-path` is empty: pass the run directory's config.yaml")
    path = Path(config_path)
    _log_rounds(path.parent / "server.log")
    cfg = load_config(path)
    if cfg.faults.kind != "none":  # `flowerbed deploy prepare` refuses it first
        raise ValueError(f"faults={cfg.faults.kind} is for simulations only, not deployments")
    run_federation(grid, cfg, path.parent)


def _log_rounds(log_file: Path) -> None:
    """One line per round to the stream `flwr run --stream` shows, and to the run dir."""
    logger = logging.getLogger("flowerbed")
    logger.setLevel(logging.INFO)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    for handler in (logging.StreamHandler(), logging.FileHandler(log_file)):
        handler.setFormatter(formatter)
        logger.addHandler(handler)


def make_server_app(
    cfg: FlowerbedConfig,
    run_dir: Path,
    stop: threading.Event | None = None,
    live: LiveStatus | None = None,
) -> ServerApp:
    """A ServerApp bound to a config already composed and validated in this process.

    `stop`: set when the user stops the simulation; the federation then records itself
    as interrupted instead of waiting out the round (`server/stoppable.py`). `live`: the
    terminal's line while a round waits for its clients."""
    bound = ServerApp()

    @bound.main()
    def _main(grid: Grid, context: Context) -> None:
        if stop is None:
            run_federation(grid, cfg, run_dir)
            return
        extra = [live] if live is not None else []
        run_federation(StoppableGrid(grid, stop, live), cfg, run_dir, extra)

    return bound
