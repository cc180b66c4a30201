"""The Flower ServerApp: load the run's resolved config and run the federation.

Deployment (`flwr run`) hands the app `config-path` in its run config: the YAML that
`flowerbed` resolved and wrote into the run directory. Simulation builds the same app
around an already loaded config with `make_server_app`.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from flowerbed.config import FlowerbedConfig, load_config
from flowerbed.server.loop import run_federation

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config_path = str(context.run_config.get("config-path", ""))
    if not config_path:
        raise ValueError("run config `config-path` is empty: pass the run directory's config.yaml")
    path = Path(config_path)
    run_federation(grid, load_config(path), path.parent)


def make_server_app(cfg: FlowerbedConfig, run_dir: Path) -> ServerApp:
    """A ServerApp bound to a config already composed and validated in this process."""
    bound = ServerApp()

    @bound.main()
    def _main(grid: Grid, context: Context) -> None:
        run_federation(grid, cfg, run_dir)

    return bound
