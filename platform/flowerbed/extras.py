"""flowerbed's optional extras (pyproject: tracking, search, slurm): what each brings, and
one sentence, before any work, when a run asks for one that is not installed."""

from __future__ import annotations

EXTRAS = {
    "search=": ("hydra_plugins.hydra_optuna_sweeper", "search"),
    "hydra/sweeper=optuna": ("hydra_plugins.hydra_optuna_sweeper", "search"),
    "hydra/launcher=slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "tracking=wandb": ("wandb", "tracking"),
}
"""What an override asks for that an optional extra brings: the module, and the extra."""


def missing_extra(args: list[str]) -> str | None:
    """A sentence for an override that needs an optional extra which is not installed."""
    import importlib.util

    for arg in args:
        for asks, (module, extra) in EXTRAS.items():
            if arg.startswith(asks) and importlib.util.find_spec(module) is None:
                return needs_extra(arg, extra)
    return None


def needs_extra(what: str, extra: str) -> str:
    return (
        f"{what} needs flowerbed's optional `{extra}` extra, which is not installed: "
        f"`uv sync --extra {extra}` (or `pip install 'flowerbed[{extra}]'`)"
    )
