"""Secure aggregation on Flower's Deployment Engine: three institutions, TLS, real processes.

The SuperNodes keep each institution's SecAgg+ keys in the node's Context between the
Messages of a round, so a secure round runs across processes exactly as in a simulation;
each institution requires secure aggregation and checks every round it is in.
"""

from __future__ import annotations

import json

import pytest

from tests.loopback import BIN, Loopback
from tests.test_deployment import overrides

pytestmark = pytest.mark.slow

SITES = ("site-0", "site-1", "site-2")


def test_three_institutions_run_two_secure_rounds_across_a_real_superlink(tmp_path, cache_dir):
    loopback = Loopback(tmp_path)
    try:
        institutions = [arg for site in SITES for arg in ("--institution", site)]
        made = loopback.flowerbed(
            "deploy", "credentials", str(loopback.certs), "--host", "127.0.0.1", *institutions
        )
        assert made.returncode == 0, made.stderr
        run_dir = tmp_path / "run"
        secure = ["federation.num_clients=3", "federation.rounds=2"]
        secure += ["federation.secure_aggregation=secaggplus"]
        prepared = loopback.flowerbed(
            "deploy", "prepare", "--shards", str(run_dir), *overrides(cache_dir, *secure)
        )
        assert prepared.returncode == 0, prepared.stderr
        loopback.start_superlink()
        for i, site in enumerate(SITES):
            key = loopback.certs / "supernodes" / f"{site}.pub"
            registered = loopback.command(str(BIN / "flwr"), "supernode", "register", str(key))
            assert registered.returncode == 0, registered.stdout + registered.stderr
            loopback.start_supernode(
                site,
                loopback.certs / "supernodes" / site,
                f"partition-id={i} data-dir='{run_dir}/clients/client-{i}/data' "
                f"state-dir='{tmp_path}/{site}-state' threads=1 max-epsilon=8 max-delta=1e-5 "
                "require-secure-aggregation=true min-secure-clients=3",
            )
        loopback.wait_for(lambda: loopback.online_nodes() == 3, "three SuperNodes online")
        run = loopback.flowerbed("deploy", "run", str(run_dir), "--connection", "loopback")
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    finally:
        loopback.close()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"] == 2
    assert summary["final_val_loss"] < summary["initial_val_loss"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["round"], r["clients"], r["failed_clients"]) for r in rows] == [(1, 3, 0), (2, 3, 0)]
    for site in SITES:  # each institution's DP ledger went on under the masks
        ledger = json.loads((tmp_path / f"{site}-state" / "privacy_ledger.json").read_text())
        assert [e["round"] for e in ledger["entries"]] == [1, 2]
