"""Simulations beyond one process a client: clients of two ranks, and a two-node Ray
cluster the simulation joins (`federation.ray_address`), both ending where the plain
simulation ends."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flowerbed.run.simulation import simulate
from tests.conftest import TINY, tiny_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
ROUNDS = {"rounds": 2}


def losses(run_dir: Path) -> list[float]:
    """Every round's train and validation loss, in order."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [loss for row in rows for loss in (row["train_loss"], row["val_loss"])]


@pytest.fixture(scope="module")
def one_rank(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("one-rank")
    simulate(tiny_config(cache_dir, federation=ROUNDS), run_dir)
    return run_dir


def test_clients_of_two_ranks_end_where_clients_of_one_do(one_rank, cache_dir, tmp_path):
    cfg = tiny_config(cache_dir, federation={**ROUNDS, "ranks_per_client": 2})
    simulate(cfg, tmp_path / "two-ranks")
    assert losses(tmp_path / "two-ranks") == pytest.approx(losses(one_rank), abs=1e-3)


def test_a_simulation_joins_a_two_node_ray_cluster(one_rank, cache_dir, tmp_path):
    """Two Ray nodes of one CPU each, on this machine: each hosts one simulated client."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        command = [
            *(sys.executable, "-m", "flowerbed.cli.main", "simulate"),
            *TINY,
            f"data.cache_dir={cache_dir}",
            "federation.rounds=2",
            f"federation.ray_address={cluster.address}",
            f"hydra.run.dir={tmp_path / 'cluster'}",
        ]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert len(cluster.list_all_nodes()) == 2
    finally:
        cluster.shutdown()  # stops the nodes' processes it started, by their ids
    assert losses(tmp_path / "cluster") == pytest.approx(losses(one_rank), abs=1e-6)
