"""Every experiment and option composes and validates; the YAML tree is the one source of
defaults; wrong values are named in one sentence."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import get_args

import pytest
import yaml

from flowerbed.config import (
    ConfigError,
    FlowerbedConfig,
    compose_config,
    load_config,
    to_plain_dict,
)
from flowerbed.config.conf_dir import conf_dir
from flowerbed.config.robustness import FaultKind

EXPERIMENTS = sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml"))
SECTIONS = {f.name for f in dataclasses.fields(FlowerbedConfig)}
FOLDERS = {p.name for p in conf_dir().iterdir() if p.is_dir()}
GROUPS = sorted(FOLDERS & SECTIONS)
"""Options of one config section each; the other folders are scenarios, sweeps and Hydra's."""
REQUIRED = {
    ("model", "pretrained"): ["model.pretrained=/some/dir"],
    ("data", "files"): ["data.paths=[/some/file.txt]"],
    ("combiner", "krum"): ["combiner.faulty_clients=0"],  # 4 clients: n >= 2f + 3
    ("combiner", "multikrum"): ["combiner.faulty_clients=0"],
} | {("faults", kind): ["faults.clients=[1]"] for kind in get_args(FaultKind) if kind != "none"}
REQUIRED["faults", "rank_crash"].append("federation.ranks_per_client=2")


def test_there_are_named_experiments_and_no_unknown_config_folders():
    assert "smoke" in EXPERIMENTS
    assert {"experiment", "sweep", "search", "hydra"} == FOLDERS - SECTIONS


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(experiment: str):
    # Fine-tuning experiments name no base model: the user gives theirs.
    base = ["model.pretrained=runs/base/final_model"] if experiment == "finetuning" else []
    assert compose_config(f"experiment={experiment}", *base).name == experiment


def test_a_fine_tuning_experiment_without_a_base_says_what_to_give():
    with pytest.raises(ConfigError, match=r"model=pretrained needs model\.pretrained="):
        compose_config("experiment=finetuning")


def test_default_config_is_the_readme_run():
    cfg = compose_config()
    assert (cfg.model.preset, cfg.data.corpus, cfg.federation.num_clients) == ("small", "stdlib", 4)
    assert (cfg.privacy.mode, cfg.privacy.target_epsilon, cfg.continual.mode) == (
        "dp_sgd",
        8.0,
        "replay",
    )


def _schema_keys(cls: type, prefix: str = "") -> set[str]:
    keys = set()
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[field.name]):
            keys |= _schema_keys(hints[field.name], f"{prefix}{field.name}.")
        else:
            keys.add(f"{prefix}{field.name}")
    return keys


def _yaml_keys(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        if isinstance(value, dict):
            keys |= _yaml_keys(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def test_the_schema_has_no_defaults_and_config_yaml_gives_every_key_once():
    """One source of defaults: the dataclasses name types and rules, conf/config.yaml values."""
    for cls in {FlowerbedConfig, *typing.get_type_hints(FlowerbedConfig).values()}:
        if dataclasses.is_dataclass(cls):
            for field in dataclasses.fields(cls):
                no_default = field.default is dataclasses.MISSING
                assert no_default and field.default_factory is dataclasses.MISSING, field.name
    assert _yaml_keys(_base()) == _schema_keys(FlowerbedConfig)


def _base() -> dict:
    base = yaml.safe_load((conf_dir() / "config.yaml").read_text())
    base.pop("defaults"), base.pop("hydra")
    return base


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_option_is_the_defaults_plus_what_it_names(group: str):
    """Read with plain YAML, not through flowerbed: config.yaml's section, then the option."""
    for path in sorted((conf_dir() / group).glob("*.yaml")):
        option = {k: v for k, v in (yaml.safe_load(path.read_text()) or {}).items()}
        given = REQUIRED.get((group, path.stem), [])
        composed = to_plain_dict(compose_config(f"{group}={path.stem}", *given))[group]
        expected = {**_base()[group], **option}
        for extra in given:
            key, value = extra.split("=")
            if key.startswith(f"{group}."):  # another section's key only makes it valid
                expected[key.split(".")[1]] = yaml.safe_load(value)
        for key in RESOLVED.get(group, ()):  # `auto` becomes a choice when the run starts
            if expected[key] == "auto":
                expected[key] = composed[key]
        assert composed == expected, f"{group}={path.stem}"


RESOLVED = {"data": ["packing"], "privacy": ["unit"]}


def test_the_privacy_unit_and_packing_resolve_from_the_corpus():
    own = compose_config("data=files", "data.paths=[/x]")
    assert (own.privacy.unit, own.data.packing) == ("document", "documents")
    built_in = compose_config()
    assert (built_in.privacy.unit, built_in.data.packing) == ("sequence", "stream")
    plain = compose_config("data=files", "data.paths=[/x]", "privacy=off")
    assert (plain.privacy.unit, plain.data.packing) == ("sequence", "stream")


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
        ("~train.lr", "missing key train.lr"),
        ("federation.max_update_norm=big", "max_update_norm must be a float or auto; got 'big'"),
        ("federation.max_examples_per_client=0", "max_examples_per_client must be >= 1, got 0"),
        ("faults.scale=-1e4", "faults.scale must be > 0 for faults=none, got -10000.0"),
    ],
)
def test_wrong_values_are_named(override: str, message: str):
    with pytest.raises(ConfigError) as err:
        compose_config(override)
    assert message in str(err.value)


def test_sequences_per_round_sets_local_steps_so_batch_sizes_train_equal_tokens():
    for batch, steps in [(8, 64), (64, 8), (256, 2)]:
        cfg = compose_config("train.sequences_per_round=512", f"train.batch_size={batch}")
        assert cfg.train.local_steps == steps
    with pytest.raises(ConfigError, match=r"train\.sequences_per_round=100 is not a multiple"):
        compose_config("train.sequences_per_round=100", "train.batch_size=8")


def test_files_corpus_needs_paths_and_a_pretrained_model_needs_its_path():
    with pytest.raises(ConfigError, match=r"data\.paths must list at least one"):
        compose_config("data=files")
    with pytest.raises(ConfigError, match=r"model=pretrained needs model\.pretrained="):
        compose_config("model=pretrained")


def test_missing_config_file_is_named(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"config file .*nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["privacy.unit=user"], "privacy.unit=user needs users, which the built-in stdlib"),
        (
            ["privacy.unit=document", "privacy.grad_sample_mode=ghost"],
            "privacy.grad_sample_mode=ghost clips sequences only, not privacy.unit=document",
        ),
        (
            ["privacy.unit=document", "privacy.max_physical_batch=4"],
            "privacy.max_physical_batch=4 would split a unit of privacy.max_blocks_per_unit=8",
        ),
        (
            ["privacy.unit=document", "data.packing=stream"],
            "privacy.unit=document needs blocks that never cross a document",
        ),
    ],
)
def test_a_unit_that_cannot_be_protected_is_refused_at_start(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        compose_config(*overrides)


def test_an_auto_batch_under_dp_is_the_largest_leaving_100_steps_and_it_sets_the_steps():
    """The noise-batch rule at the dp_utility study's budgets: 6 rounds of 160 sequences
    leave batch 8 (120 steps; 16 would leave 60), of 640 sequences batch 32."""
    for per_round, batch in ((160, 8), (640, 32)):
        cfg = compose_config(
            "experiment=privacy_unit",
            "train.batch_size=auto",
            f"train.sequences_per_round={per_round}",
        )
        assert (cfg.train.batch_size, cfg.train.local_steps) == (batch, per_round // batch)
    with pytest.raises(ConfigError, match=r"with privacy=off give train\.batch_size"):
        compose_config("experiment=smoke", "train.batch_size=auto")
    with pytest.raises(ConfigError, match=r"give train\.sequences_per_round"):
        compose_config("experiment=smoke_dp", "train.batch_size=auto")
