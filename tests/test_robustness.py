"""Faulty and hostile clients in real federations: admission names them, robust combiners
outvote them, a federation whose every client diverges stops as failed, and no run
leaves a non-finite model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flowerbed.run.simulation import simulate
from flowerbed.server.replies import FederationError
from tests.conftest import tiny_config
from tests.loopback import Loopback

pytestmark = pytest.mark.slow
# Honest updates here are about 3 long (L2); hostile ones, x1000.
ADMISSION = {"min_clients": 1, "num_clients": 3, "rounds": 2, "max_update_norm": 20.0}
ADMISSION |= {"update_norm_policy": "reject", "max_examples_per_client": 1000}


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def finite_model(run_dir: Path) -> bool:
    weights = load_file(run_dir / "final_model" / "model.safetensors")
    return all(bool(torch.isfinite(t).all()) for t in weights.values())


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("non_finite", "its weights hold NaN or infinite values"),
        ("wrong_shape", "where the model's is float32"),
        ("scaled", "is above federation.max_update_norm=20 (update_norm_policy=reject)"),
        ("random", "is above federation.max_update_norm=20 (update_norm_policy=reject)"),
        ("sign_flip", None),  # as long as an honest update: admission cannot tell
        ("inflated_examples", None),  # its claim is capped at max_examples_per_client
    ],
)
def test_mean_with_admission_names_the_hostile_client_and_stays_finite(
    cache_dir, tmp_path, kind, reason
):
    cfg = tiny_config(cache_dir, federation=ADMISSION, faults={"kind": kind, "clients": [2]})
    summary = simulate(cfg, tmp_path)
    assert summary["status"] == "completed" and finite_model(tmp_path)
    for row in rows(tmp_path):
        rejected = row["rejected_clients"] or {}
        if reason is None:
            assert rejected == {} and row["clients"] == 3
        else:
            assert set(rejected) == {"2"} and reason in rejected["2"]
            assert rejected["2"].startswith("client 2's reply is left out: ")
            assert row["clients"] == 2
    if reason:
        assert summary["repeatedly_rejected"]["2"].startswith("rounds 1-2: client 2's reply")


# no norm bound (the default's `auto` would leave the scaled update out first): the
# combiner alone outvotes it
UNBOUNDED = {"num_clients": 5, "rounds": 2, "max_update_norm": None}


@pytest.fixture(scope="module")
def honest(cache_dir, tmp_path_factory) -> dict:
    """The five-client federation without a hostile client: both combiners' bar."""
    return simulate(tiny_config(cache_dir, federation=UNBOUNDED), tmp_path_factory.mktemp("h"))


@pytest.mark.parametrize("combiner", ["median", "krum"])
def test_a_robust_combiner_outvotes_a_client_scaling_its_update_by_1000(
    cache_dir, tmp_path, combiner, honest
):
    fed = UNBOUNDED
    cfg = tiny_config(
        cache_dir,
        federation=fed,
        combiner={"name": combiner, "faulty_clients": 1},
        faults={"kind": "scaled", "clients": [4], "scale": 1000.0},
    )
    hostile = simulate(cfg, tmp_path / "hostile")
    assert finite_model(tmp_path / "hostile")
    assert hostile["final_val_loss"] < honest["initial_val_loss"] - 0.3  # it still learns
    assert hostile["final_val_loss"] == pytest.approx(honest["final_val_loss"], rel=0.1)


def test_a_federation_whose_every_client_diverges_stops_as_failed(cache_dir, tmp_path):
    cfg = tiny_config(cache_dir, train={"lr": 1e4}, federation={"rounds": 2})
    with pytest.raises(FederationError, match=r"0 client update\(s\) admitted, fewer than"):
        simulate(cfg, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "NaN or infinite" in summary["error"]
    assert finite_model(tmp_path)  # the last finite model, kept


def test_a_deployment_refuses_faults(tmp_path, cache_dir):
    loopback = Loopback(tmp_path)
    prepared = loopback.flowerbed(
        "deploy", "prepare", str(tmp_path / "run"), "experiment=smoke",
        f"data.cache_dir={cache_dir}", "faults=scaled", "faults.clients=[0]",
    )  # fmt: skip
    assert prepared.returncode == 1 and "Traceback" not in prepared.stderr
    assert "faults=scaled is for simulations only" in prepared.stderr
    assert not (tmp_path / "run" / "config.yaml").exists()
