"""Sweeps: a grid that survives a failing job and ends in a report; jobs side by side.

The report is checked first on job folders made by hand (numbers computed here), then
on real sweeps of the tiny smoke federation through the `flowerbed` command.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
import yaml

from flowerbed.tracking.report import write_report
from tests.test_cli import flowerbed

TINY_SMOKE = [
    "experiment=smoke",
    "data.seq_len=32",
    "data.synthetic_docs_per_domain=60",
    "train.local_steps=2",
    "train.eval_batches=2",
]


def sweep(tmp_path: Path, *overrides: str):
    """`flowerbed simulate -m` of the tiny smoke federation into `tmp_path`."""
    return flowerbed(
        "simulate",
        "-m",
        *TINY_SMOKE,
        *overrides,
        f"hydra.sweep.dir={tmp_path}",
        f"data.cache_dir={tmp_path / 'cache'}",
    )


def fake_job(folder: Path, overrides: list[str], val: float | None, eps: float | None) -> None:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if val is None:
        summary = {"status": "failed", "error": "train.lr must be > 0, got -1.0"}
    else:
        summary = {
            "status": "completed",
            "final_val_loss": val,
            "final_val_perplexity": 2.0**val,
            "epsilon_max": eps,
            "total_tokens": 1000,
            "continual": {"average_loss": val, "forgetting": 0.1, "backward_transfer": -0.1},
        }
        rounds = [{"round": 1, "val_loss": val + 1, "seconds": 2.0, "client_train_seconds": 1.0}]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    (folder / "summary.json").write_text(json.dumps(summary))


@pytest.mark.parametrize(
    ("grid", "caveat"),
    [
        ([("1e-3", "0", 3.00), ("1e-2", "0", 3.02)], "with one seed per setting the seeds' spread"),
        (
            [("1e-3", "0", 3.0), ("1e-3", "1", 3.2), ("1e-2", "0", 3.05), ("1e-2", "1", 3.25)],
            "within one standard deviation over seeds",
        ),
        ([("1e-3", "0", 3.0), ("1e-3", "1", 3.01), ("1e-2", "0", 3.5), ("1e-2", "1", 3.51)], None),
    ],
    ids=["one-seed", "within-spread", "clear-winner"],
)
def test_the_report_says_when_the_best_setting_is_not_told_apart(tmp_path: Path, grid, caveat):
    for i, (lr, seed, val) in enumerate(grid):
        fake_job(tmp_path / str(i), [f"train.lr={lr}", f"seed={seed}"], val, None)
    text = write_report(tmp_path, max_epsilon=None).markdown.read_text()
    assert "**Best setting** (lowest mean final validation loss" in text
    assert ("The next, train.lr=1e-2" in text) == (caveat is not None)
    if caveat:
        assert caveat in text


def test_a_report_has_one_row_per_setting_with_seeds_aggregated(tmp_path: Path):
    grid = [("2", "0", 3.0, 1.9), ("2", "1", 3.2, 2.0), ("8", "0", 2.5, 7.9), ("8", "1", 2.7, 8.0)]
    for i, (eps, seed, val, spent) in enumerate(grid):
        overrides = [f"privacy.target_epsilon={eps}", f"seed={seed}"]
        fake_job(tmp_path / str(i), overrides, val, spent)
    fake_job(tmp_path / "4", ["privacy.target_epsilon=-1", "seed=0"], None, None)
    report = write_report(tmp_path, max_epsilon=4.0)
    rows = list(csv.DictReader(report.csv.open()))
    assert [r["privacy.target_epsilon"] for r in rows] == ["2", "8", "-1"]
    assert float(rows[0]["final_val_loss_mean"]) == pytest.approx(3.1)
    assert float(rows[0]["final_val_loss_std"]) == pytest.approx(statistics.stdev([3.0, 3.2]))
    assert rows[0]["seeds"] == "2" and rows[2]["status"].startswith("1 of 1 failed")
    text = report.markdown.read_text()
    # within ε 4 only the ε-2 setting qualifies, though ε 8 has the lower loss
    assert "**Best setting** (lowest mean final validation loss, ε ≤ 4" in text
    assert "privacy.target_epsilon=2, with val loss 3.1000" in text
    assert report.failed_jobs == [
        "job 4 (privacy.target_epsilon=-1 seed=0): failed: train.lr must be > 0, got -1.0"
    ]
    names = {p.name for p in report.plots}
    assert names == {"loss_over_rounds.png", "privacy_utility.png"}
    assert all(p.stat().st_size > 0 for p in report.plots)


def test_named_sweeps_and_the_search_compose_with_their_sweepers_and_launchers():
    from hydra import compose, initialize_config_dir

    from flowerbed.config.conf_dir import conf_dir

    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        grid = compose("config", ["sweep=privacy_replay"], return_hydra_config=True)
        search = compose("config", ["search=dp_budget"], return_hydra_config=True)
        slurm = compose("config", ["hydra/launcher=slurm"], return_hydra_config=True)
    assert dict(grid.hydra.sweeper.params) == {
        "privacy.target_epsilon": "2,4,8",
        "continual.replay_fraction": "0.01,0.05,0.25",
        "seed": "0,1,2",
    }
    assert search.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert search.hydra.sweeper.direction == "minimize" and search.privacy.target_epsilon == 8
    assert slurm.hydra.launcher._target_.endswith("SlurmLauncher")


def test_parallel_jobs_take_one_gpu_each_round_robin(monkeypatch):
    import os

    import torch

    from flowerbed.cli.sweep import pin_gpu

    monkeypatch.setattr(os, "environ", {})  # this process's own environment stays as it was
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    pin_gpu(job_number=5, parallel_jobs=1)  # one job at a time: every GPU stays visible
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    pin_gpu(job_number=5, parallel_jobs=4)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"


@pytest.mark.slow
def test_a_grid_sweep_survives_a_failing_job_and_ends_in_a_report(tmp_path: Path):
    # experiences 3 cannot arrive in 2 rounds: exactly one of the four jobs is refused
    out = sweep(tmp_path, "continual.experiences=2,3", "federation.rounds=2,3", "tracking=wandb")
    log = out.stdout + out.stderr
    assert out.returncode == 1, log[-3000:]
    assert "1 sweep job(s) failed" in log and "experience 3 would arrive in round 3" in log
    statuses = {
        p.parent.name: json.loads(p.read_text())["status"] for p in tmp_path.glob("*/summary.json")
    }
    assert sorted(statuses.values()) == ["completed", "completed", "completed", "failed"]
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert len(rows) == 4 and {r["continual.experiences"] for r in rows} == {"2", "3"}
    failed = [r for r in rows if r["status"] != "completed"]
    assert len(failed) == 1 and (
        failed[0]["continual.experiences"],
        failed[0]["federation.rounds"],
    ) == ("3", "2")
    assert all(float(r["final_val_loss_mean"]) > 0 for r in rows if r["status"] == "completed")
    assert (tmp_path / "report.md").is_file() and (tmp_path / "loss_over_rounds.png").is_file()
    assert (tmp_path / "forgetting_vs_replay.png").exists() is False  # replay was not swept
    completed = [r for r in rows if r["status"] == "completed"]
    assert all(r["wandb_runs"] for r in completed)  # each row links its W&B run
    assert len({r["wandb_runs"] for r in completed}) == 3


@pytest.mark.slow
def test_the_parallel_launcher_runs_two_jobs_at_once_with_separate_outputs(tmp_path: Path):
    out = sweep(
        tmp_path,
        "federation.rounds=1",
        "continual.experiences=1",
        "seed=0,1",
        "hydra/launcher=parallel",
        "hydra.launcher.n_jobs=2",
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    summaries = [json.loads((tmp_path / j / "summary.json").read_text()) for j in ("0", "1")]
    assert [s["status"] for s in summaries] == ["completed", "completed"]
    assert summaries[0]["final_val_loss"] != summaries[1]["final_val_loss"]  # two seeds
    starts = [(tmp_path / j / "initial_val_loss.json").stat().st_mtime for j in ("0", "1")]
    ends = [(tmp_path / j / "summary.json").stat().st_mtime for j in ("0", "1")]
    assert max(starts) < min(ends)  # both had started before either finished
