"""DP-SGD in real federations: the lifetime ledger, crashes, and the budget policy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from flowerbed.model.inner_state import FOLDER
from flowerbed.privacy.ledger import FILENAME, PrivacyLedger
from flowerbed.privacy.planning import plan
from flowerbed.run.prepare import prepare_run
from flowerbed.run.simulation import continue_simulation, simulate
from flowerbed.tracking import RunLayout
from tests.conftest import tiny_config
from tests.test_privacy_accounting import reference

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
DP = {"mode": "dp_sgd", "target_epsilon": 8.0, "delta": 1e-5}
TRAIN = {"batch_size": 16, "local_steps": 10, "lr": 1e-2}


def ledger_of(run_dir: Path, client: int) -> PrivacyLedger:
    return PrivacyLedger.open(
        run_dir / "clients" / f"client-{client}" / "state" / FILENAME, 1e-5, "prv"
    )


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory, cache_dir):
    cfg = tiny_config(cache_dir, privacy=DP, train=TRAIN)
    run_dir = tmp_path_factory.mktemp("dp") / "run"
    return cfg, run_dir, simulate(cfg, run_dir)


def test_a_dp_federation_still_lowers_validation_loss(dp_run):
    _, _, summary = dp_run
    assert summary["final_val_loss"] < summary["initial_val_loss"] - 0.5


def test_the_target_epsilon_is_spent_over_the_planned_life_not_per_round(dp_run):
    _, run_dir, summary = dp_run
    worst = [r["epsilon_max"] for r in records(run_dir)]
    assert worst == sorted(worst) and worst[0] < worst[-1]
    assert 7.5 < summary["epsilon_max"] <= 8.0
    assert set(summary["client_epsilon"]) == {"0", "1"}
    assert (run_dir / "privacy_epsilon.png").stat().st_size > 0


def test_each_ledger_matches_an_independent_accountant(dp_run):
    _, run_dir, summary = dp_run
    for client in (0, 1):
        ledger = ledger_of(run_dir, client)
        assert [e.round for e in ledger.entries] == [1, 2, 3]
        assert ledger.steps == 30 and len({e.noise_multiplier for e in ledger.entries}) == 1
        assert ledger.epsilon == pytest.approx(reference(ledger.history, 1e-5, "pld"), rel=0.01)
        # the server sees each ε to 0.01 (the default release)
        assert ledger.epsilon == pytest.approx(summary["client_epsilon"][str(client)], abs=0.005)


CRASHING_CLIENT = """
import os, sys
from pathlib import Path
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from transformers import AutoTokenizer
import flowerbed.client.app as client_app
from flowerbed.config import load_config
from flowerbed.model.factory import build_model
from flowerbed.model.transport import to_array_record
from flowerbed.protocol import ARRAYS, CONFIG
from flowerbed.server.instructions import model_spec, train_instructions
from flowerbed.tracking import RunLayout

TaskIdentity.run_id = TaskIdentity.task_id = TaskIdentity.node_id = 1  # as Flower's runtime does

run_dir, crash = Path(sys.argv[1]), sys.argv[2] == "crash"
layout, cfg = RunLayout(run_dir), load_config(run_dir / "config.yaml")
tokenizer = AutoTokenizer.from_pretrained(layout.tokenizer)
model = build_model(cfg.model, len(tokenizer), tokenizer.eos_token_id, cfg.seed)
config = train_instructions(cfg, model_spec(cfg, model), 1).to_record()
content = RecordDict({ARRAYS: to_array_record(model.state_dict(), "fp32"), CONFIG: config})
message = Message(content, dst_node_id=1, message_type=MessageType.TRAIN)
if crash:  # die after training and after the ledger write, before the reply exists
    client_app._reply = lambda *args, **kwargs: os._exit(9)
node_config = {"partition-id": 0, "data-dir": str(layout.client_data(0)),
               "state-dir": str(layout.client_state(0))}  # as a SuperNode's --node-config
context = Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={})
client_app.app(message, context)
"""


def run_script(script: str, *args: str) -> int:
    """A Python script in a process of its own (one the test may see die); its exit code."""
    command = [sys.executable, "-c", script, *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300).returncode


def run_client(run_dir: Path, mode: str) -> int:
    return run_script(CRASHING_CLIENT, str(run_dir), mode)


def test_the_outer_step_is_post_processing_and_leaves_every_ledger_as_it_was(
    dp_run, cache_dir, tmp_path
):
    _, fedavg_dir, _ = dp_run
    diloco = {"name": "diloco", "outer_lr": 0.7, "outer_momentum": 0.9, "keep_inner_state": True}
    cfg = tiny_config(cache_dir, privacy=DP, train=TRAIN, strategy=diloco)
    summary = simulate(cfg, tmp_path / "diloco")
    assert summary["final_val_loss"] < summary["initial_val_loss"] - 0.5
    for client in range(cfg.federation.num_clients):
        ours, theirs = ledger_of(tmp_path / "diloco", client), ledger_of(fedavg_dir, client)
        assert ours.history == theirs.history and ours.epsilon == theirs.epsilon
        # The AdamW moments of the private steps were carried across rounds, too.
        inner = tmp_path / "diloco" / "clients" / f"client-{client}" / "state" / FOLDER
        moments = load_file(inner / "round-00003.safetensors")
        steps = {float(v) for k, v in moments.items() if k.startswith("step/")}
        assert steps == {3 * cfg.train.local_steps}


def test_a_client_killed_before_replying_never_undercounts(cache_dir, tmp_path):
    cfg = tiny_config(cache_dir, privacy=DP, train=TRAIN, federation={"rounds": 2})
    prepare_run(cfg, RunLayout(tmp_path))
    assert run_client(tmp_path, "crash") == 9
    after_crash = ledger_of(tmp_path, 0)
    assert [e.round for e in after_crash.entries] == [1] and after_crash.epsilon > 0
    assert run_client(tmp_path, "normal") == 0  # restarted; the server sends round 1 again
    after_restart = ledger_of(tmp_path, 0)
    assert [e.round for e in after_restart.entries] == [1, 1]
    assert after_restart.epsilon > after_crash.epsilon


def test_a_client_at_its_budget_stops_and_the_federation_goes_on(cache_dir, tmp_path):
    cfg = tiny_config(
        cache_dir,
        train=TRAIN,
        privacy={"mode": "dp_sgd", "noise_multiplier": 1.0, "max_epsilon": 5.0},
    )
    prepare_run(cfg, RunLayout(tmp_path))
    spent = tmp_path / "clients" / "client-0" / "state" / FILENAME
    PrivacyLedger.open(spent, 1e-5, "prv").write_ahead(spent, 0, "r", (1.0, 0.5, 400), "secret")
    summary = continue_simulation(cfg, tmp_path)
    assert summary["status"] == "completed" and summary["rounds"] == 3
    assert all(r["budget_exhausted_clients"] == 1 and r["clients"] == 1 for r in records(tmp_path))
    assert len(ledger_of(tmp_path, 0).entries) == 1  # it never trained again
    assert len(ledger_of(tmp_path, 1).entries) == 3
    assert summary["client_epsilon"]["1"] <= 5.0


def test_when_every_budget_is_spent_the_run_ends_early_and_says_why(cache_dir, tmp_path):
    base = tiny_config(cache_dir, train=TRAIN, privacy={"mode": "dp_sgd", "noise_multiplier": 1.0})
    prepare_run(base, RunLayout(tmp_path))
    records_per_client = min(
        len(np.load(p)) for p in tmp_path.glob("clients/*/data/train.tokens.npy")
    )
    one = plan(records_per_client, 16, 1, 10, 1e-5, noise_multiplier=1.0).epsilon
    two = plan(records_per_client, 16, 2, 10, 1e-5, noise_multiplier=1.0).epsilon
    cfg = tiny_config(
        cache_dir,
        train=TRAIN,
        privacy={"mode": "dp_sgd", "noise_multiplier": 1.0, "max_epsilon": (one + two) / 2},
    )
    summary = continue_simulation(cfg, tmp_path)
    assert summary["rounds"] == 1 and summary["stop_reason"] == "privacy budget spent"
    assert summary["epsilon_max"] <= (one + two) / 2


def test_user_level_dp_uses_flowers_accountant_per_release(cache_dir, tmp_path):
    cfg = tiny_config(
        cache_dir,
        federation={"rounds": 2},
        privacy={"mode": "user_level", "noise_multiplier": 1.0, "max_grad_norm": 5.0},
    )
    summary = simulate(cfg, tmp_path)
    epsilons = [r["user_level_epsilon"] for r in records(tmp_path)]
    # One Gaussian release per round at sigma 1, no amplification by sampling, delta 1e-5,
    # composed by Google's dp-accounting (RDP), not by Flower's accountant under test.
    expected = [gaussian_releases_epsilon(1.0, k, 1e-5) for k in (1, 2)]
    assert epsilons == pytest.approx(expected, rel=0.005)
    assert summary["user_level_epsilon"] == pytest.approx(expected[-1], rel=0.005)


def gaussian_releases_epsilon(sigma: float, releases: int, delta: float) -> float:
    import dp_accounting
    from dp_accounting.rdp import rdp_privacy_accountant

    accountant = rdp_privacy_accountant.RdpAccountant()
    accountant.compose(
        dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma), releases)
    )
    return accountant.get_epsilon(delta)


def test_banded_dp_lora_from_a_public_base_spends_its_target_and_keeps_its_noise_home(
    tmp_path, cache_dir
):
    """privacy.mechanism=banded end to end, with LoRA on a base pretrained on public text
    first: ε within the target, the strategy fixed in the ledger, the buffers in each
    node's state directory (owner only), the run's config naming its base, the loss
    lowered."""
    banded = {**DP, "mechanism": "banded", "bands": 5}
    base = {"public_base": "stdlib", "public_base_steps": 20, "public_base_batch_size": 4}
    cfg = tiny_config(
        cache_dir,
        privacy=banded,
        train=TRAIN,
        model=base,
        adapter={"mode": "lora", "rank": 4},
        data={"max_chars_per_domain": 20000},
    )
    run_dir = tmp_path / "run"
    summary = simulate(cfg, run_dir)
    assert 7.5 < summary["epsilon_max"] <= 8.0
    assert summary["final_val_loss"] < summary["initial_val_loss"]
    saved = (run_dir / "config.yaml").read_text()
    assert "public_base: none" in saved and "/bases/" in saved  # the base it federated from
    for client in (0, 1):
        ledger = ledger_of(run_dir, client)
        assert ledger.mechanism == "banded" and len(ledger.coefficients) == 5
        assert [e.steps for e in ledger.entries] == [2, 2, 2]  # 10 steps, 5 bands
        kept = run_dir / "clients" / f"client-{client}" / "state" / "correlated-noise"
        assert {p.stat().st_mode & 0o777 for p in kept.iterdir()} == {0o600}
