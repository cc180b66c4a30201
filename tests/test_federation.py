"""Real federations on Flower's Simulation Engine: training, artifacts, resume, fine-tuning."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flowerbed.run.prepare import prepare_run
from flowerbed.run.simulation import continue_simulation, simulate
from flowerbed.server.replies import FederationError
from flowerbed.tracking import RunLayout
from tests.conftest import tiny_config
from tests.recording import recorded_simulation

pytestmark = pytest.mark.slow


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "final_model" / "model.safetensors")


def test_validation_loss_falls_over_rounds(federated_run):
    _, run_dir = federated_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"] == 3
    assert summary["final_val_loss"] < summary["initial_val_loss"] - 0.5
    rows = records(run_dir)
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]


def test_every_round_records_the_metrics_a_user_reads(federated_run):
    _, run_dir = federated_run
    for row in records(run_dir):
        for key in (
            "train_loss",
            "val_loss",
            "val_perplexity",
            "heldout_loss",
            "tokens",
            "tokens_per_s",
            "seconds",
            "clients",
        ):
            assert row[key] is not None, key
        assert row["clients"] == 2 and row["tokens"] == 2 * 6 * 8 * 32


def test_run_directory_holds_config_plot_checkpoints_and_a_loadable_model(federated_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, run_dir = federated_run
    assert (run_dir / "config.yaml").is_file() and (run_dir / "val_loss.png").stat().st_size > 0
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "round-00002",
        "round-00003",
    ]
    model = AutoModelForCausalLM.from_pretrained(run_dir / "final_model")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "final_model")
    ids = tokenizer("Ba", return_tensors="pt")["input_ids"]
    out = model.generate(
        ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.eos_token_id
    )
    assert out.shape[1] == ids.shape[1] + 5


def test_an_interrupted_run_resumes_to_the_same_weights(federated_run, copy_run):
    cfg, complete = federated_run
    crashed = copy_run(complete)
    # As if the process died after checkpointing round 2: round 3 and the final outputs are gone.
    shutil.rmtree(crashed / "checkpoints" / "round-00003")
    shutil.rmtree(crashed / "final_model")
    (crashed / "summary.json").unlink()
    continue_simulation(cfg, crashed)
    assert [r["round"] for r in records(crashed)] == [1, 2, 3]
    resumed, original = final_weights(crashed), final_weights(complete)
    for name, tensor in original.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-6)


def test_a_run_interrupted_before_its_heldout_losses_came_back_resumes_to_the_same_records(
    federated_run, copy_run
):
    cfg, complete = federated_run
    crashed = copy_run(complete)
    # As if the process died after checkpointing round 2 but before round 3's replies
    # brought the clients' held-out losses of round 2's model: its metrics line is missing.
    shutil.rmtree(crashed / "checkpoints" / "round-00003")
    shutil.rmtree(crashed / "final_model")
    (crashed / "summary.json").unlink()
    lines = (crashed / "metrics.jsonl").read_text().splitlines(keepends=True)
    (crashed / "metrics.jsonl").write_text(lines[0])
    continue_simulation(cfg, crashed)
    resumed, original = records(crashed), records(complete)
    assert [r["round"] for r in resumed] == [1, 2, 3]
    for again, before in zip(resumed, original, strict=True):
        for key in ("train_loss", "val_loss", "heldout_loss"):
            assert again[key] == pytest.approx(before[key], rel=1e-5), (again["round"], key)


@pytest.mark.parametrize(
    ("fraction_train", "expected"),
    [
        (1.0, [["train"] * 2, ["train"] * 2, ["evaluate"] * 2]),
        (0.5, [["train"], ["evaluate", "train"], ["evaluate"] * 2]),
    ],
    ids=["every-client-trains", "half-train"],
)
def test_a_round_sends_each_client_one_message_and_the_final_model_one_evaluation(
    cache_dir, tmp_path, fraction_train, expected
):
    cfg = tiny_config(
        cache_dir, federation={"rounds": 2, "fraction_train": fraction_train, "min_clients": 1}
    )
    prepare_run(cfg, RunLayout(tmp_path))
    grid = recorded_simulation(cfg, tmp_path)
    assert grid.sent == expected
    rows = records(tmp_path)
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["heldout_loss"] is not None for r in rows)


def test_fine_tuning_starts_from_a_saved_model(federated_run, cache_dir, tmp_path):
    _, pretrained = federated_run
    cfg = tiny_config(
        cache_dir,
        model={"pretrained": str(pretrained / "final_model")},
        federation={"rounds": 1},
        tracking={"wandb": True, "wandb_mode": "offline"},
    )
    summary = simulate(cfg, tmp_path / "finetune")
    assert list((tmp_path / "finetune" / "wandb").glob("offline-run-*")), "W&B wrote no offline run"
    before = json.loads((pretrained / "summary.json").read_text())
    assert summary["initial_val_loss"] == pytest.approx(before["final_val_loss"], abs=1e-3)
    assert summary["final_val_loss"] < before["initial_val_loss"] - 0.5


def test_a_failing_client_is_left_out_and_reported(cache_dir, tmp_path):
    cfg = tiny_config(cache_dir, federation={"rounds": 1, "min_clients": 1})
    prepare_run(cfg, RunLayout(tmp_path))
    shutil.rmtree(RunLayout(tmp_path).client_data(1))
    summary = continue_simulation(cfg, tmp_path)
    assert summary["status"] == "completed"
    assert records(tmp_path)[0]["failed_clients"] == 1 and records(tmp_path)[0]["clients"] == 1


def test_too_few_successful_clients_stop_the_run_with_the_cause(cache_dir, tmp_path):
    cfg = tiny_config(cache_dir, federation={"rounds": 1, "min_clients": 2})
    prepare_run(cfg, RunLayout(tmp_path))
    shutil.rmtree(RunLayout(tmp_path).client_data(1))
    with pytest.raises(
        FederationError, match=r"round 1: 1 client\(s\) replied .*client-1/data does not exist"
    ):
        continue_simulation(cfg, tmp_path)
