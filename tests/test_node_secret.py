"""The node's secret: DP noise and sampling nobody but the node can reproduce.

Two fresh runs of one config end with different weights; `privacy.noise_seed=run` makes
them identical; a client re-running a round after a crash draws exactly what it drew;
and the secret appears in no Message the server receives and no file outside the
client's state directory.
"""

from __future__ import annotations

import base64
import json
import shutil
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flowerbed.privacy.ledger import FILENAME as LEDGER
from flowerbed.privacy.secret import FILENAME, NodeSecret, NodeSecretError
from flowerbed.run.prepare import prepare_run
from flowerbed.run.simulation import simulate
from flowerbed.tracking import RunLayout
from tests.conftest import tiny_config
from tests.recording import recorded_simulation
from tests.test_privacy_federation import run_script

ROOT = Path(__file__).resolve().parents[1]
DP = {"mode": "dp_sgd", "target_epsilon": 8.0, "delta": 1e-5}
TRAIN = {"batch_size": 16, "local_steps": 4, "lr": 1e-2}


def test_a_secret_is_created_once_private_to_its_owner_and_never_shown(tmp_path):
    secret = NodeSecret.open(tmp_path / "state")
    path = tmp_path / "state" / FILENAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(path.read_bytes()) == 32
    again = NodeSecret.open(tmp_path / "state")
    assert again.digest("noise", 0, 1) == secret.digest("noise", 0, 1)
    assert "hidden" in repr(secret) and path.read_bytes().hex() not in repr(secret)


def test_keys_differ_by_purpose_by_nonce_and_by_node(tmp_path):
    one, other = NodeSecret.open(tmp_path / "a"), NodeSecret.open(tmp_path / "b")
    keys = {
        one.digest("noise", "n1"),
        one.digest("noise", "n2"),  # the same round as another release
        one.digest("sample", "n1"),
        other.digest("noise", "n1"),
    }
    assert len(keys) == 4 and all(len(k) == 32 for k in keys)
    draws = [g.random(4).tolist() for g in (one.generator("x"), one.generator("x"))]
    assert draws[0] == draws[1]


def test_a_secret_others_can_read_or_a_damaged_one_is_refused_with_the_fix(tmp_path):
    NodeSecret.open(tmp_path)
    path = tmp_path / FILENAME
    path.chmod(0o644)
    with pytest.raises(NodeSecretError, match=f"chmod 600 {path}"):
        NodeSecret.open(tmp_path)
    path.chmod(0o600)
    path.write_bytes(b"short")
    with pytest.raises(NodeSecretError, match="holds 5 bytes, not 32: restore it"):
        NodeSecret.open(tmp_path)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "final_model" / "model.safetensors")


@pytest.mark.slow
def test_two_fresh_dp_runs_differ_unless_the_noise_comes_from_the_runs_seed(cache_dir, tmp_path):
    fed = {"rounds": 1}
    secret = tiny_config(cache_dir, privacy=DP, train=TRAIN, federation=fed)
    repeatable = tiny_config(
        cache_dir, privacy={**DP, "noise_seed": "run"}, train=TRAIN, federation=fed
    )
    runs = {
        name: [simulate(cfg, tmp_path / f"{name}-{i}") for i in range(2)]
        for name, cfg in (("secret", secret), ("run", repeatable))
    }
    a, b = (final_weights(tmp_path / f"secret-{i}") for i in range(2))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    c, d = (final_weights(tmp_path / f"run-{i}") for i in range(2))
    assert all(torch.equal(c[k], d[k]) for k in c)
    assert "secret to each node" in runs["secret"][0]["guarantee"]
    assert "NOT private against anyone who knows the run's seed" in runs["run"][0]["guarantee"]
    ledger = tmp_path / "run-0" / "clients" / "client-0" / "state" / "privacy_ledger.json"
    assert '"noise_seed": "run"' in ledger.read_text()


def spellings(secret: bytes) -> list[bytes]:
    return [
        secret,
        secret.hex().encode(),
        secret.hex().upper().encode(),
        base64.b64encode(secret),
        base64.urlsafe_b64encode(secret),
    ]


@pytest.mark.slow
def test_the_secret_is_in_no_message_and_no_file_outside_the_clients_state(cache_dir, tmp_path):
    cfg = tiny_config(
        cache_dir, privacy=DP, train=TRAIN, federation={"rounds": 2}, continual={"mode": "off"}
    )
    layout = RunLayout(tmp_path)
    prepare_run(cfg, layout)
    grid = recorded_simulation(cfg, tmp_path)
    states = [layout.client_state(i) for i in range(cfg.federation.num_clients)]
    secrets = [(state / FILENAME).read_bytes() for state in states]
    assert len(set(secrets)) == 2  # every node has its own
    assert len(grid.received) == 6  # 2 clients x (2 train + the final evaluate)
    for reply in grid.received:
        wire = [str(dict(record)).encode() for record in reply.content.metric_records.values()]
        wire += [str(dict(record)).encode() for record in reply.content.config_records.values()]
        for array_record in reply.content.array_records.values():
            wire += [array.data for array in array_record.values()]
        for secret in secrets:
            assert not any(s in blob for s in spellings(secret) for blob in wire)
    for path in tmp_path.rglob("*"):
        if path.is_file() and not any(state in path.parents for state in states):
            content = path.read_bytes()
            for secret in secrets:
                assert not any(s in content for s in spellings(secret)), path


CRASHING_ROUND = """
import os, sys
from pathlib import Path
from transformers import AutoTokenizer
from flowerbed.client import local_round
from flowerbed.client.local_round import train_round
from flowerbed.client.node import Node
from flowerbed.config.node_policy import accepting_all
from flowerbed.config import load_config
from flowerbed.model.factory import build_model
from flowerbed.server.instructions import model_spec, train_instructions
from flowerbed.tracking import RunLayout
from safetensors.torch import save_file

run_dir, out, crash = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "crash"
def save(trained):
    save_file({k: v.contiguous() for k, v in trained.items()}, out)
if crash:  # the round trains, keeps what it would send, and dies before it is done
    shared = local_round.shared_state
    local_round.shared_state = lambda model: save(shared(model)) or os._exit(9)
layout, cfg = RunLayout(run_dir), load_config(run_dir / "config.yaml")
tokenizer = AutoTokenizer.from_pretrained(layout.tokenizer)
model = build_model(cfg.model, len(tokenizer), tokenizer.eos_token_id, cfg.seed)
job = train_instructions(cfg, model_spec(cfg, model), 1)
node = Node(0, layout.client_data(0), layout.client_state(0), "cpu", 1, accepting_all(), True)
_, trained = train_round(job, model.state_dict(), node)
save(trained)
"""


def client_round(run_dir: Path, out: Path, crash: bool = False) -> int:
    return run_script(CRASHING_ROUND, str(run_dir), str(out), "crash" if crash else "run")


@pytest.mark.slow
def test_a_client_re_running_a_round_after_a_crash_draws_exactly_what_it_drew(cache_dir, tmp_path):
    cfg = tiny_config(cache_dir, privacy=DP, train=TRAIN, federation={"rounds": 2})
    prepare_run(cfg, RunLayout(tmp_path / "crashed"))
    NodeSecret.open(RunLayout(tmp_path / "crashed").client_state(0))
    shutil.copytree(tmp_path / "crashed", tmp_path / "fresh")
    crashed, resumed = tmp_path / "crashed.safetensors", tmp_path / "resumed.safetensors"
    assert client_round(tmp_path / "crashed", crashed, crash=True) == 9
    assert client_round(tmp_path / "crashed", resumed) == 0
    before, after = load_file(crashed), load_file(resumed)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the same release, again
    ledger = json.loads((RunLayout(tmp_path / "crashed").client_state(0) / LEDGER).read_text())
    assert len(ledger["entries"]) == 1 and not ledger["entries"][0]["pending"]
    # A fresh state directory (another node, or a lost one) draws other noise.
    fresh = tmp_path / "fresh"
    (RunLayout(fresh).client_state(0) / FILENAME).unlink()
    assert client_round(fresh, tmp_path / "fresh.safetensors") == 0
    other = load_file(tmp_path / "fresh.safetensors")
    assert any(not torch.equal(before[k], other[k]) for k in before)
