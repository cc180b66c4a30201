"""A public base first: pretrained on the built-in public corpus, cached, then federated."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowerbed.config import ConfigError, compose_config
from flowerbed.model import build_model
from flowerbed.run import public_base
from flowerbed.run.public_base import with_public_base
from tests.conftest import tiny_config

BASE = {"public_base": "stdlib", "public_base_steps": 6, "public_base_batch_size": 4}
SMALL_STDLIB = {"max_chars_per_domain": 20000}


def test_the_base_is_pretrained_once_and_then_found_in_the_cache(cache_dir, monkeypatch):
    cfg = tiny_config(cache_dir, model=BASE, data=SMALL_STDLIB)
    based = with_public_base(cfg)
    folder = based.model.pretrained
    assert folder and Path(folder).parent == cache_dir / "bases"
    assert based.model.public_base == "none" and cfg.model.pretrained is None

    def never(*args):
        raise AssertionError("a cached base was trained again")

    monkeypatch.setattr(public_base, "_pretrain", never)
    assert with_public_base(cfg).model.pretrained == folder
    other = tiny_config(cache_dir, model={**BASE, "public_base_steps": 7}, data=SMALL_STDLIB)
    with pytest.raises(AssertionError, match="trained again"):  # other settings, other base
        with_public_base(other)
    loaded = build_model(based.model, 257, 256, seed=0)
    assert loaded.config.hidden_size == 64  # the tiny preset's, as pretrained


def test_a_base_to_pretrain_and_one_to_load_are_not_both_given():
    with pytest.raises(ConfigError, match="give one of them"):
        compose_config("model.public_base=stdlib", "model.pretrained=/some/base")
