"""The federation on Flower's Deployment Engine, with real processes on loopback.

A coordinator (SuperLink with TLS, SuperNode authentication and a state database) and
two institutions (SuperNodes with their own data and state directories) run the
commands docs/deployment.md's walk-through gives.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.loopback import BIN, ROOT, Loopback

pytestmark = pytest.mark.slow


def overrides(cache_dir: Path, *extra: str) -> list[str]:
    return [
        "experiment=smoke_dp",
        f"data.cache_dir={cache_dir}",
        "data.seq_len=32",
        "data.synthetic_docs_per_domain=60",
        "train.local_steps=4",
        "federation.fraction_evaluate=0",  # half the ClientApp processes: train Messages only
        *extra,
    ]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, cache_dir):
    root = tmp_path_factory.mktemp("deployment")
    loopback = Loopback(root)
    made = loopback.flowerbed(
        "deploy", "credentials", str(loopback.certs), "--host", "127.0.0.1",
        "--institution", "site-0", "--institution", "site-1",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    run_dir = root / "run"
    prepared = loopback.flowerbed(
        "deploy",
        "prepare",
        "--shards",
        str(run_dir),
        *overrides(cache_dir, "federation.rounds=2", "federation.transport_dtype=bf16"),
    )
    assert prepared.returncode == 0, prepared.stderr
    loopback.start_superlink()
    for site in ("site-0", "site-1"):
        key = loopback.certs / "supernodes" / f"{site}.pub"
        registered = loopback.command(str(BIN / "flwr"), "supernode", "register", str(key))
        assert registered.returncode == 0, registered.stdout + registered.stderr
    start_institutions(loopback, run_dir, root)
    yield loopback, run_dir
    loopback.close()


POLICY = "max-epsilon=8 max-delta=1e-5"  # the walk-through's: each institution's own


def start_institutions(
    loopback: Loopback, run_dir: Path, state_root: Path, sites=(0, 1), policy: str = POLICY
) -> None:
    """SuperNodes for `sites`, with the shards of `run_dir`, state under `state_root` and
    the institutions' privacy `policy`; site 1's rounds train on two ranks."""
    for i in sites:
        loopback.start_supernode(
            f"site-{i}",
            loopback.certs / "supernodes" / f"site-{i}",
            f"partition-id={i} data-dir='{run_dir}/clients/client-{i}/data' "
            f"state-dir='{state_root}/site-{i}-state' threads=1 {policy}"  # two on one machine
            + (" ranks=2" if i == 1 else ""),  # site 1 trains on two processes
        )
    loopback.wait_for(lambda: loopback.online_nodes() == 2, "two SuperNodes online")


def test_two_institutions_train_with_tls_authentication_dp_and_bf16_weights(deployment):
    loopback, run_dir = deployment
    run = loopback.flowerbed("deploy", "run", str(run_dir), "--connection", "loopback")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"] == 2
    assert summary["final_val_loss"] < summary["initial_val_loss"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["round"], r["clients"], r["failed_clients"]) for r in rows] == [(1, 2, 0), (2, 2, 0)]
    # bf16 on the wire: 2 bytes a parameter, plus a small header per array
    assert rows[0]["bytes_per_client"] == pytest.approx(2 * summary["parameters"], rel=0.03)
    for i in (0, 1):
        ledger = json.loads((loopback.root / f"site-{i}-state/privacy_ledger.json").read_text())
        assert [e["round"] for e in ledger["entries"]] == [1, 2]
        assert ledger["entries"][-1]["epsilon"] == pytest.approx(
            summary["client_epsilon"][str(i)], abs=0.005
        )  # the coordinator sees ε to 0.01
        assert ledger["entries"][-1]["epsilon"] <= 8.0
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(run_dir / "final_model")


def prepare(loopback: Loopback, run_dir: Path, cache_dir: Path, *extra: str) -> None:
    """A coordinator's run directory for the walk-through's settings and `extra`."""
    settings = overrides(cache_dir, *extra)
    prepared = loopback.flowerbed("deploy", "prepare", str(run_dir), *settings)
    assert prepared.returncode == 0, prepared.stderr


def test_an_institution_refuses_a_server_asking_for_more_than_its_policy(deployment, cache_dir):
    loopback, first_run = deployment
    run_dir = first_run.parent / "greedy"
    prepare(loopback, run_dir, cache_dir, "federation.rounds=1", "privacy.target_epsilon=16")
    ledgers = [loopback.root / f"site-{i}-state" / "privacy_ledger.json" for i in (0, 1)]
    before = [p.read_text() if p.is_file() else None for p in ledgers]
    run = loopback.flowerbed("deploy", "run", str(run_dir), "--connection", "loopback")
    assert run.returncode == 1  # nobody trained: the run fails, and says why
    log = (run_dir / "server.log").read_text()
    for i in (0, 1):
        assert (
            f"client {i} refuses the server's privacy settings: its policy accepts ε ≤ 8 over "
            "the node's life (max-epsilon), but the server asked for privacy.target_epsilon=16"
        ) in log
    assert [p.read_text() if p.is_file() else None for p in ledgers] == before  # nothing spent


def test_an_unregistered_supernode_is_refused(deployment):
    loopback, _ = deployment
    made = loopback.flowerbed("deploy", "supernode-key", str(loopback.root / "keys"), "stranger")
    assert made.returncode == 0, made.stderr
    stranger = loopback.start_supernode(
        "stranger", loopback.root / "keys" / "stranger", "partition-id=7"
    )
    assert stranger.wait(timeout=120) != 0
    assert "Failed to activate SuperNode" in loopback.log("stranger")
    assert loopback.online_nodes() == 2


def test_a_killed_institution_is_left_out_and_its_ledger_survives(deployment, cache_dir):
    loopback, first_run = deployment
    root = first_run.parent / "node-killed"
    for i in (0, 1):  # institutions of this test's own, with fresh state directories
        loopback.stop(f"site-{i}")
    # The SuperLink refuses a key whose node it still holds active: wait out the heartbeat.
    loopback.wait_for(lambda: loopback.online_nodes() == 0, "the old SuperNodes offline", 300)
    # Institutions that accept runs without DP (the next test runs one) and no ε cap (this
    # test's last run asks for ε 100). They hold the first run's data, so their ledgers'
    # mirrors go elsewhere: else they would rightly count the first run's releases too.
    policy = f"require-dp=false ledger-mirror-dir='{root / 'mirrors'}'"
    start_institutions(loopback, first_run, root, policy=policy)
    ledger_path = root / "site-1-state" / "privacy_ledger.json"

    def deploy(name: str, *extra: str) -> subprocess.Popen:
        run_dir = root / name
        prepare(loopback, run_dir, cache_dir, "federation.min_clients=1", *extra)
        submit = [sys.executable, "-m", "flowerbed.cli.main", "deploy", "run", str(run_dir)]
        return subprocess.Popen(
            [*submit, "--connection", "loopback"],
            cwd=ROOT,
            env=loopback.env,
            stdout=subprocess.DEVNULL,
        )

    run = deploy("run", "federation.rounds=3")
    metrics = root / "run" / "metrics.jsonl"

    def trained() -> bool:
        return metrics.is_file() and bool(metrics.read_text().strip())

    loopback.wait_for(lambda: trained() or run.poll() is not None, "round 1", 600)
    assert trained(), f"the run ended (exit {run.returncode}) before round 1"
    loopback.stop("site-1")  # the institution's machine dies, ClientApp and all
    after_kill = json.loads(ledger_path.read_text())["entries"]
    assert [e["round"] for e in after_kill] in ([1], [1, 2])  # round 2 may have been written
    assert run.wait(timeout=900) == 0  # min_clients=1: the federation goes on without it
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert rows[0]["clients"] == 2 and any(r["failed_clients"] == 1 for r in rows[1:])
    start_institutions(loopback, first_run, root, sites=(1,), policy=policy)
    # The institution trains again: its ledger must go on from what it held, not restart.
    # (The noise stays what the ledger fixed for life; this run's budget leaves room.)
    again = deploy("again", "federation.rounds=1", "privacy.target_epsilon=100")
    assert again.wait(timeout=900) == 0
    entries = json.loads(ledger_path.read_text())["entries"]
    assert entries[: len(after_kill)] == after_kill and len(entries) == len(after_kill) + 1
    assert entries[-1]["round"] == 1 and entries[-1]["epsilon"] > after_kill[-1]["epsilon"]


def test_the_server_side_crashes_and_the_run_resumes_from_its_checkpoint(deployment, cache_dir):
    """Runs after the killed-institution test, on its institutions: they accept a run
    without DP (the module's first ones refuse it, as a node does by default)."""
    loopback, first_run = deployment
    run_dir = first_run.parent / "crashing"
    prepare(loopback, run_dir, cache_dir, "federation.rounds=2", "privacy=off")
    submit = [sys.executable, "-m", "flowerbed.cli.main", "deploy", "run", str(run_dir)]
    submit += ["--connection", "loopback"]
    first = subprocess.Popen(submit, cwd=ROOT, env=loopback.env, stdout=subprocess.DEVNULL)
    loopback.wait_for(
        lambda: (run_dir / "checkpoints" / "round-00001").is_dir(), "round 1's checkpoint", 600
    )
    loopback.kill_descendant("superlink", "flwr-serverapp")  # ours, by its id
    assert first.wait(timeout=300) == 1  # the run did not complete, and says so
    again = loopback.flowerbed("deploy", "run", str(run_dir), "--connection", "loopback")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"] == 2
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    assert "resuming after round" in (run_dir / "server.log").read_text()
