"""The GPU check: one command a machine with a GPU runs, one JSON of what it found.

The GPU path has run only in tests that skip on CPU; this runs, each under its own time
limit, what tells whether it works and what it costs: the GPU tests, the client's
training step against a plain PyTorch loop and the DP-SGD step against the plain one at
125M parameters, sequence 512, bf16 autocast, batch 16 and 64 (tokens/s, ratios, peak
GPU memory), a 2-round 125M simulated federation with DP, and with two or more GPUs the
client's step on one rank per GPU against one rank. Every step's command,
exit status, seconds and output go into the JSON, also when a step fails or times out,
so one run on a lent GPU answers as much as it can.

    bash simulations/gpu_check.sh                      # writes gpu_check.json
    GPU_CHECK_DEVICE=cpu GPU_CHECK_PRESET=tiny bash simulations/gpu_check.sh   # plumbing, on CPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def steps(
    device: str, preset: str, seq_len: int, out: Path, gpus: int
) -> list[tuple[str, list[str], int]]:
    """(name, command, seconds allowed) of every step, in order."""
    python = [sys.executable]
    shape = ["--preset", preset, "--seq-len", str(seq_len), "--device", device]
    federation = [
        f"model={preset}", "data=synthetic", "data.tokenizer=byte", f"data.seq_len={seq_len}",
        "continual=off", "federation.num_clients=2", "federation.rounds=2",
        "train.local_steps=5", "train.batch_size=16", "train.eval_batches=2",
        f"device={device}", f"federation.client_gpus={0.5 if device == 'cuda' else 0}",
        f"hydra.run.dir={out / 'federation'}", f"data.cache_dir={out / 'cache'}",
    ]  # fmt: skip
    return [
        ("gpu tests", [*python, "-m", "pytest", "-m", "gpu", "-q", "-rs", "tests/test_gpu.py"], 60),
        *(
            (
                f"client step, batch {batch}",
                [*python, "simulations/bench_client_step.py", *shape, "--batch-size", str(batch)],
                55,
            )
            for batch in (16, 64)
        ),
        *(
            (
                f"DP step, batch {batch}",
                [*python, "simulations/bench_dp.py", *shape, "--batch-size", str(batch)],
                70,
            )
            for batch in (16, 64)
        ),
        (
            "federation, 2 rounds with DP",
            [*python, "-m", "flowerbed.cli.main", "simulate", *federation],
            120,
        ),
        *(
            [
                (
                    f"client step on {gpus} ranks, batch 64",
                    [
                        *python,
                        "simulations/bench_client_step.py",
                        *shape,
                        "--batch-size",
                        "64",
                        "--ranks",
                        str(gpus),
                    ],
                    50,
                )
            ]
            if device == "cuda" and gpus >= 2
            else []
        ),
    ]  # at most 60 + 2 x 55 + 2 x 70 + 120 + 50 = 480 s: the check fits in 8 minutes


def machine() -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info |= {
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "bf16": torch.cuda.is_bf16_supported(),
            "cuda_version": torch.version.cuda,
        }
    return info


def run(name: str, command: list[str], limit: int) -> dict:
    started = time.monotonic()
    print(f"::: {name} (at most {limit} s)", flush=True)
    try:
        done = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=limit, env=os.environ
        )
        rc, out = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as err:
        rc = "timeout"
        out = (err.stdout or b"").decode(errors="replace") + (err.stderr or b"").decode(
            errors="replace"
        )
    seconds = round(time.monotonic() - started, 1)
    print(f"::: {name}: {'passed' if rc == 0 else f'rc {rc}'} in {seconds} s", flush=True)
    return {"name": name, "command": command, "rc": rc, "seconds": seconds, "output": out[-6000:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--device", default=os.environ.get("GPU_CHECK_DEVICE", "cuda"))
    parser.add_argument("--preset", default=os.environ.get("GPU_CHECK_PRESET", "125m"))
    parser.add_argument("--seq-len", type=int, default=int(os.environ.get("GPU_CHECK_SEQ", 512)))
    args = parser.parse_args()
    work = args.out.resolve().parent / "gpu_check_runs"
    results = {"machine": machine(), "device": args.device, "preset": args.preset, "steps": []}
    gpus = len(results["machine"].get("devices", []))
    for name, command, limit in steps(args.device, args.preset, args.seq_len, work, gpus):
        results["steps"].append(run(name, command, limit))
        args.out.write_text(json.dumps(results, indent=2))  # what is known so far, kept
    failed = [s["name"] for s in results["steps"] if s["rc"] != 0]
    verdict = f"failed: {', '.join(failed)}" if failed else "every step passed"
    print(f"wrote {args.out}; {verdict}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
