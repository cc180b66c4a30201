"""A client's fixed cost per round: what a Message costs besides the training steps.

Under the Deployment Engine every Message starts a fresh ClientApp process, so imports,
model build, and data and state loading are paid every round. This sends real Messages
to the real ClientApp `train` function, each in a fresh process, over one client's life
(2 experiences, 2 rounds each, continual replay), and splits each process's wall time:

- imports: Python, torch, transformers, Flower and flowerbed's client modules;
- in the call, besides training: model build, data and state load, and what is imported
  lazily (Opacus under DP, Avalanche when the buffer takes in a new experience), the
  privacy calibration (once in a client's life) and the ledger.

The server's part (the global weights and settings) is built once, up front, and each
process only reads it from disk before its Message is made.

    uv run python simulations/bench_client_fixed_cost.py [--preset small]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROUNDS = [
    (1, "off", "plain round (experience 0)"),
    (2, "dp", "first DP round: noise calibrated for the whole life"),
    (3, "dp", "DP round, experience 1 arrives: Avalanche buffer update"),
    (4, "dp", "DP round, buffer read from the state directory"),
]


def config(preset: str, local_steps: int, privacy: str):
    from flowerbed.config import load_config

    dp = {"mode": "dp_sgd", "target_epsilon": 8.0} if privacy == "dp" else {"mode": "off"}
    return load_config(
        {
            "model": {"preset": preset},
            "data": {"corpus": "synthetic", "seq_len": 128},
            "federation": {"num_clients": 1, "rounds": 4},
            "train": {"local_steps": local_steps},
            "privacy": dp,
            "continual": {"mode": "replay", "experiences": 2},
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--local-steps", type=int, default=2)
    args = parser.parse_args()
    from safetensors.torch import save_file

    from flowerbed.cli.simulate import prepare_run
    from flowerbed.model.factory import build_model
    from flowerbed.server.loop import round_config
    from flowerbed.tracking import RunLayout

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        layout = RunLayout(run_dir)
        prepare_run(config(args.preset, args.local_steps, "dp"), layout)
        model = build_model(config(args.preset, 1, "off").model, 257, 256, 0)
        save_file(model.state_dict(), run_dir / "weights.safetensors")
        for privacy in ("off", "dp"):
            settings = round_config(
                config(args.preset, args.local_steps, privacy), model, layout.clients
            )
            (run_dir / f"settings-{privacy}.json").write_text(json.dumps(dict(settings)))
        print(f"preset {args.preset}, {args.local_steps} local steps, CPU, a fresh process each")
        print("| round | process s | imports s | in the call, besides training s | training s |")
        print("|---|---|---|---|---|")
        for round_, privacy, label in ROUNDS:
            started = time.perf_counter()
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(run_dir), privacy, str(round_)],
                capture_output=True,
                text=True,
            )
            wall = time.perf_counter() - started
            if out.returncode != 0:
                sys.exit(f"round {round_} failed:\n{out.stderr[-3000:]}")
            t = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"| {label} | {wall:.1f} | {t['imports']:.1f} | {t['call'] - t['train']:.1f} "
                f"| {t['train']:.1f} |"
            )


def child(run_dir: Path, privacy: str, round_: int) -> None:
    """One train Message through the ClientApp in this fresh process; print timings."""
    started = time.perf_counter()
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from flowerbed.client.app import train
    from flowerbed.model.transport import to_array_record

    imported = time.perf_counter()
    TaskIdentity.run_id = TaskIdentity.task_id = TaskIdentity.node_id = 1  # as Flower's runtime
    from safetensors.torch import load_file

    settings = ConfigRecord(json.loads((run_dir / f"settings-{privacy}.json").read_text()))
    settings["server-round"] = round_
    arrays = to_array_record(load_file(run_dir / "weights.safetensors"), "fp32")
    message = Message(
        RecordDict({"arrays": arrays, "config": settings}), dst_node_id=1, message_type="train"
    )
    context = Context(
        run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(), run_config={}
    )
    built = time.perf_counter()
    reply = train(message, context)
    done = time.perf_counter()
    train_seconds = float(reply.content["metrics"]["train_seconds"])
    print(json.dumps({"imports": imported - started, "call": done - built, "train": train_seconds}))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
    else:
        main()
