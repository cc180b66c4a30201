"""The `flowerbed` command as a user runs it: Hydra overrides, errors, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def flowerbed(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flowerbed.cli.main", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_help_lists_the_commands():
    out = flowerbed("--help")
    assert out.returncode == 0 and "simulate" in out.stdout


def test_a_wrong_value_stops_with_one_sentence_and_a_nonzero_exit(tmp_path: Path):
    out = flowerbed("simulate", "federation.num_clients=0", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 1
    assert "federation.num_clients must be >= 1, got 0" in out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr


def test_an_unknown_option_names_the_choices(tmp_path: Path):
    out = flowerbed("simulate", "model=huge", f"hydra.run.dir={tmp_path}")
    assert out.returncode != 0 and "tiny" in out.stderr


@pytest.mark.slow
def test_smoke_experiment_runs_the_continual_path_from_the_command_line(tmp_path: Path):
    out = flowerbed(
        "simulate",
        "experiment=smoke",
        f"hydra.run.dir={tmp_path}",
        f"data.cache_dir={tmp_path / 'cache'}",
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "round 2/2 | train" in out.stdout + out.stderr
    assert "exp 1 seen-avg" in out.stdout + out.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["continual_mode"] == "replay"
    assert len(summary["continual"]["loss_matrix"]) == 2


def test_privacy_planning_gives_the_noise_for_a_target_and_the_epsilon_for_a_noise():
    settings = ["--records", "1000", "--batch-size", "40", "--rounds", "45", "--local-steps", "50"]
    noise = flowerbed("privacy", "noise", *settings, "--target-epsilon", "8")
    assert noise.returncode == 0 and "noise σ       = 1.34766" in noise.stdout
    spent = flowerbed(
        "privacy", "epsilon", *settings, "--noise-multiplier", "1.5", "--accountant", "rdp"
    )
    assert spent.returncode == 0 and "epsilon       = 7.3291" in spent.stdout
