"""The `flowerbed` command as a user runs it: Hydra overrides, errors, exit codes."""

from __future__ import annotations

import json
import re
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
    from tests.test_privacy_accounting import reference

    settings = ["--records", "1000", "--batch-size", "40", "--rounds", "45", "--local-steps", "50"]
    noise = flowerbed("privacy", "noise", *settings, "--target-epsilon", "8")
    assert noise.returncode == 0, noise.stderr
    sigma = float(re.search(r"noise σ += ([0-9.]+)", noise.stdout).group(1))
    # By Google's dp-accounting (PLD): the printed noise spends the target, and a little
    # less noise would not do (q = 40/1000 over 45 x 50 steps).
    assert 7.9 < reference([(sigma, 0.04, 2250)], 1e-5, "pld") <= 8.0 * 1.01
    assert reference([(0.97 * sigma, 0.04, 2250)], 1e-5, "pld") > 8.0
    spent = flowerbed(
        "privacy", "epsilon", *settings, "--noise-multiplier", "1.5", "--accountant", "rdp"
    )
    assert spent.returncode == 0, spent.stderr
    printed = float(re.search(r"epsilon += ([0-9.]+)", spent.stdout).group(1))
    assert printed == pytest.approx(reference([(1.5, 0.04, 2250)], 1e-5, "rdp"), rel=1e-3)


def test_the_recipe_takes_the_largest_batch_that_leaves_its_steps_within_the_target():
    """3,840 sequences over a life (491,520 tokens of 128): batches 8, 16, 32 leave 100
    steps or more; 32 has the least noise per sequence in the mean gradient, and its σ
    spends ε 8 by Google's dp-accounting."""
    from tests.test_privacy_accounting import reference

    settings = ["--units", "2700", "--target-epsilon", "8", "--tokens", "491520"]
    made = flowerbed("privacy", "recommend", *settings)
    assert made.returncode == 0, made.stderr
    rows = re.findall(r"^\| (\d+) \| (\d+) \| ([0-9.]+) \|", made.stdout, re.MULTILINE)
    assert [(int(b), int(k)) for b, k, _ in rows] == [(8, 480), (16, 240), (32, 120)]
    assert "recommended: train.batch_size=32, 120 steps" in made.stdout
    sigma = float(rows[-1][2])
    assert 7.9 < reference([(sigma, 32 / 2700, 120)], 1e-5, "pld") <= 8.0
    too_few = flowerbed("privacy", "recommend", *settings[:4], "--tokens", "1000")
    assert too_few.returncode != 0
    assert "cannot give 100 steps of 8 units: train more tokens" in too_few.stderr
    wrong = flowerbed("privacy", "recommend", *settings, "--blocks-per-unit", "0.01")
    assert "--blocks-per-unit must be 1 for sequences" in wrong.stderr


def test_an_institution_turns_its_files_into_experiences_and_bad_files_are_named(tmp_path):
    from flowerbed.config import compose_config, to_plain_dict
    from flowerbed.data import byte_tokenizer
    from flowerbed.data.blocks import Blocks
    from flowerbed.tracking import RunLayout

    kit = RunLayout(tmp_path / "kit")  # what the coordinator sends: config.yaml and tokenizer
    byte_tokenizer().save_pretrained(kit.tokenizer)
    config = to_plain_dict(compose_config("data=files", "data.paths=[x]", "data.seq_len=64"))
    kit.config.write_text(json.dumps(config))  # JSON is YAML
    (tmp_path / "notes.txt").write_text("Discharge summary: the patient recovered well. " * 200)
    (tmp_path / "empty.txt").write_text("")
    shard = ["deploy", "shard", str(tmp_path / "data"), "--config", str(kit.config)]
    for expected in ("exp-000", "exp-001"):
        out = flowerbed(*shard, str(tmp_path / "notes.txt"))
        assert out.returncode == 0, out.stderr
        assert (tmp_path / "data" / expected / "heldout.json").is_file()
    # DP per document (the default for one's own files): the blocks keep their units
    first = Blocks.load(tmp_path / "data" / "exp-000", "train")
    again = Blocks.load(tmp_path / "data" / "exp-001", "train")
    assert first.padded and len(set(first.documents.tolist())) == 1
    assert set(first.documents.tolist()) == set(again.documents.tolist())  # the same file
    bad = flowerbed(*shard, str(tmp_path / "empty.txt"))
    assert bad.returncode == 1 and "empty.txt" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "data" / "exp-002").exists()  # nothing half-written
    config["data"]["seq_len"] = 32  # a config.yaml from another federation
    kit.config.write_text(json.dumps(config))
    other = flowerbed(*shard, str(tmp_path / "notes.txt"))
    assert other.returncode == 1 and "Traceback" not in other.stderr
    assert "seq_len 64" in other.stderr and "32" in other.stderr
    assert not (tmp_path / "data" / "exp-002").exists()


def test_resume_with_overrides_refuses_and_names_what_it_would_ignore(tmp_path: Path):
    out = flowerbed("simulate", f"resume={tmp_path}", "train.lr=0.1", "federation.rounds=9")
    assert out.returncode == 1 and "Traceback" not in out.stdout + out.stderr
    assert "would ignore train.lr=0.1, federation.rounds=9" in out.stdout + out.stderr


def test_a_cuda_run_without_a_gpu_is_refused_before_anything_starts(tmp_path: Path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = flowerbed("simulate", "experiment=smoke", "device=cuda", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 1 and "Traceback" not in out.stdout + out.stderr
    assert "device=cuda but no CUDA device is visible here" in out.stdout + out.stderr
    assert not (tmp_path / "config.yaml").exists()  # refused before the run directory


def test_a_refused_config_leaves_no_run_folder_and_says_why_on_stderr(tmp_path: Path):
    out = flowerbed("simulate", "federation.rounds=0", cwd=tmp_path)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.strip().endswith("federation.rounds must be >= 1, got 0")
    assert not (tmp_path / "runs").exists()


def test_a_mistyped_key_gets_the_keys_it_might_have_meant(tmp_path: Path):
    out = flowerbed("simulate", "federation.num_client=3", cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "the config has no key federation.num_client: did you mean federation.num_clients" in (
        out.stderr
    )
    assert not (tmp_path / "runs").exists()


def test_resuming_a_completed_run_is_refused_and_touches_nothing(federated_run):
    _, run_dir = federated_run
    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in run_dir.rglob("*")}
    out = flowerbed("simulate", f"resume={run_dir}")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"{run_dir} completed all its 3 rounds, so there is nothing to resume" in out.stderr
    assert f"model.pretrained={run_dir}/final_model" in out.stderr
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in run_dir.rglob("*")} == before


@pytest.mark.parametrize(
    ("args", "sentence"),
    [
        (["epsilon", "--noise-multiplier", "-1"], "--noise-multiplier must be > 0, got -1"),
        (["noise", "--target-epsilon", "-1"], "noise: --target-epsilon must be > 0, got -1"),
        (["noise", "--target-epsilon", "8", "--batch-size", "900"], "is more than the 100 units"),
    ],
)
def test_a_bad_privacy_planning_input_is_one_sentence(args, sentence):
    from flowerbed.cli.main import main

    settings = ["--units", "100", "--batch-size", "8", "--rounds", "2", "--local-steps", "3"]
    with pytest.raises(SystemExit) as stopped:  # a string: Python prints it, exits 1
        main(["privacy", args[0], *settings, *args[1:]])
    assert sentence in str(stopped.value.code) and "\n" not in str(stopped.value.code)


def test_a_file_that_is_not_a_ledger_is_named(tmp_path: Path):
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    out = flowerbed("privacy", "ledger", str(tmp_path / "config.yaml"))
    assert out.returncode == 1 and out.stdout == "" and len(out.stderr.splitlines()) == 1
    assert "config.yaml is not a privacy ledger" in out.stderr


def test_the_version_is_printed():
    from importlib.metadata import version

    out = flowerbed("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"flowerbed {version('flowerbed')}"


@pytest.mark.slow
def test_ctrl_c_records_an_interrupted_run_that_resumes_in_its_own_folder(tmp_path: Path):
    import os
    import signal
    import time
    import uuid

    mark = uuid.uuid4().hex  # every process the run starts inherits it
    settings = ["name=stopped", "model=tiny", "data=synthetic", "privacy=off"]
    settings += ["continual=off", "data.synthetic_docs_per_domain=60", "federation.rounds=6"]
    settings += ["train.local_steps=40", f"data.cache_dir={tmp_path / 'cache'}"]
    run = subprocess.Popen(
        [sys.executable, "-m", "flowerbed.cli.main", "simulate", *settings],
        cwd=tmp_path,
        env={**os.environ, "FLOWERBED_TEST_MARK": mark},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob("runs/stopped/*/checkpoints/round-00001")):
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()
        time.sleep(0.2)
    os.killpg(run.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole group
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err
    [run_dir] = tmp_path.glob("runs/stopped/*")
    assert f"resume with: flowerbed simulate resume={run_dir}" in err
    assert "Traceback" not in err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert summary["resume"] == f"flowerbed simulate resume={run_dir}"
    time.sleep(5)  # Ray's processes take a moment to go
    assert not _processes_marked(mark), "the interrupted run left processes behind"
    resumed = flowerbed("simulate", f"resume={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert list(tmp_path.glob("runs/*/*")) == [run_dir]  # no new folder: it logs into its run
    assert "resuming after round" in (run_dir / "simulate.log").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"] == 6


def _processes_marked(mark: str) -> list[int]:
    """Processes whose environment holds `mark` (Linux: read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if f"FLOWERBED_TEST_MARK={mark}".encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_runs_lists_each_run_with_how_it_ended(federated_run, tmp_path: Path):
    import shutil

    _, complete = federated_run
    shutil.copytree(complete, tmp_path / "runs" / "done")
    (tmp_path / "runs" / "crashed").mkdir()
    shutil.copy(complete / "config.yaml", tmp_path / "runs" / "crashed" / "config.yaml")
    out = flowerbed("runs", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["run", "status", "rounds", "final", "val", "loss", "max", "ε"]
    assert lines[1].split()[0] == "crashed" and "no summary" in lines[1]
    summary = json.loads((complete / "summary.json").read_text())
    assert lines[2].split()[:4] == ["done", "completed", "3", f"{summary['final_val_loss']:.4f}"]


def test_simulate_help_lists_each_key_with_its_type_range_default_and_meaning():
    out = flowerbed("simulate", "--help")
    assert out.returncode == 0
    assert "  federation.num_clients = 4    (int >= 1)" in out.stdout
    assert "  federation.secure_aggregation = off    (off | secaggplus)" in out.stdout
    assert ["privacy", "dp_sgd,", "off,", "user_level"] in [  # groups and their options
        line.split() for line in out.stdout.splitlines()
    ]
    one = flowerbed("simulate", "--help", "secagg")
    assert "secagg.threshold = null    (int or null >= 2)" in one.stdout
    assert "federation." not in one.stdout
    wrong = flowerbed("simulate", "--help", "federatoin")
    assert wrong.returncode == 1 and "no section 'federatoin'" in wrong.stderr


def test_a_named_sweep_composes_without_a_plus():
    from flowerbed.config import compose_config

    assert compose_config("sweep=privacy_replay").name == "privacy_replay"


def test_asking_for_a_missing_extra_is_one_sentence_naming_it(monkeypatch):
    import importlib.util

    from flowerbed.config import ConfigError, compose_config
    from flowerbed.extras import missing_extra
    from flowerbed.run.simulation import preflight

    present = importlib.util.find_spec
    gone = {"wandb", "hydra_plugins.hydra_optuna_sweeper"}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in gone else present(name, *a)
    )
    assert missing_extra(["-m", "search=dp_budget"]) == (
        "search=dp_budget needs flowerbed's optional `search` extra, which is not installed: "
        "`uv sync --extra search` (or `pip install 'flowerbed[search]'`)"
    )
    assert missing_extra(["hydra/launcher=slurm"]) is None  # submitit is still there
    with pytest.raises(ConfigError, match="needs flowerbed's optional `tracking` extra"):
        preflight(compose_config("tracking=wandb"))


def test_a_refused_data_file_leaves_no_run_folder(tmp_path: Path):
    (tmp_path / "bad.txt").write_bytes(b"\x00\x01binary")
    out = flowerbed("simulate", "data=files", "data.paths=[bad.txt]", cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "bad.txt looks binary" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt"]
