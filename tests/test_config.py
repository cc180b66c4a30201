"""Every experiment composes and validates; wrong values are named in one sentence."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from flowerbed.cli.conf_dir import conf_dir
from flowerbed.config import ConfigError, load_config

EXPERIMENTS = sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml"))


def compose_config(*overrides: str):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_there_are_named_experiments():
    assert "smoke" in EXPERIMENTS


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(experiment: str):
    cfg = load_config(compose_config(f"experiment={experiment}"))
    assert cfg.name == experiment


def test_default_config_is_the_readme_run():
    cfg = load_config(compose_config())
    assert (cfg.model.preset, cfg.data.corpus, cfg.federation.num_clients) == ("small", "stdlib", 4)


@pytest.mark.parametrize(
    "group", ["model", "data", "federation", "strategy", "privacy", "continual", "tracking"]
)
def test_every_group_option_composes(group: str):
    for option in sorted(p.stem for p in (conf_dir() / group).glob("*.yaml")):
        overrides = [f"{group}={option}"]
        if (group, option) == ("model", "pretrained"):
            overrides.append("model.pretrained=/some/dir")
        if (group, option) == ("data", "files"):
            overrides.append("data.paths=[/some/file.txt]")
        load_config(compose_config(*overrides))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("federation.num_clients=0", "federation.num_clients must be >= 1, got 0"),
        (
            "data.partition=random",
            "data.partition must be one of iid, domain, dirichlet; got 'random'",
        ),
        ("train.lr=fast", "train.lr must be a float; got 'fast'"),
        (
            "federation.transport_dtype=int8",
            "federation.transport_dtype must be one of fp32, fp16, bf16",
        ),
        ("+federation.colour=red", "unknown key federation.colour"),
        ("federation.min_clients=9", "federation.min_clients must be in [1, num_clients=4], got 9"),
        ("data.val_fraction=0.9", "data.val_fraction must be in (0, 0.5), got 0.9"),
    ],
)
def test_wrong_values_are_named(override: str, message: str):
    with pytest.raises(ConfigError) as err:
        load_config(compose_config(override))
    assert message in str(err.value)


def test_files_corpus_needs_paths():
    with pytest.raises(ConfigError, match=r"data\.paths must list at least one"):
        load_config({"data": {"corpus": "files"}})


def test_missing_config_file_is_named(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"config file .*nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")
