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
    from flowerbed.config import compose_config

    return compose_config(
        f"model={preset}",
        "data=synthetic",
        "data.seq_len=128",
        "federation.num_clients=1",
        "federation.rounds=4",
        f"train.local_steps={local_steps}",
        "privacy=dp_sgd" if privacy == "dp" else "privacy=off",
        "continual=replay",
        "continual.experiences=2",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--local-steps", type=int, default=2)
    args = parser.parse_args()
    from safetensors.torch import save_file

    from flowerbed.model.factory import build_model
    from flowerbed.run.prepare import prepare_run
    from flowerbed.server.instructions import model_spec, train_instructions
    from flowerbed.tracking import RunLayout

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        layout = RunLayout(run_dir)
        prepare_run(config(args.preset, args.local_steps, "dp"), layout)
        model = build_model(config(args.preset, 1, "off").model, 257, 256, 0)
        save_file(model.state_dict(), run_dir / "weights.safetensors")
        for privacy in ("off", "dp"):
            cfg = config(args.preset, args.local_steps, privacy)
            settings = dict(train_instructions(cfg, model_spec(cfg, model), 1).to_record())
            (run_dir / f"settings-{privacy}.json").write_text(json.dumps(settings))
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

    from flowerbed.client.app import app
    from flowerbed.model.transport import to_array_record
    from flowerbed.protocol import ARRAYS, CONFIG, SERVER_ROUND, TrainReply
    from flowerbed.tracking import RunLayout

    imported = time.perf_counter()
    TaskIdentity.run_id = TaskIdentity.task_id = TaskIdentity.node_id = 1  # as Flower's runtime
    from safetensors.torch import load_file

    settings = ConfigRecord(json.loads((run_dir / f"settings-{privacy}.json").read_text()))
    settings[SERVER_ROUND] = round_
    arrays = to_array_record(load_file(run_dir / "weights.safetensors"), "fp32")
    message = Message(
        RecordDict({ARRAYS: arrays, CONFIG: settings}), dst_node_id=1, message_type="train"
    )
    layout = RunLayout(run_dir)
    node_config = {
        "partition-id": 0,
        "data-dir": str(layout.client_data(0)),
        "state-dir": str(layout.client_state(0)),
    }  # as a SuperNode's --node-config names them
    context = Context(
        run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={}
    )
    built = time.perf_counter()
    reply = app(message, context)
    done = time.perf_counter()
    train_seconds = TrainReply.from_content(reply.content).train_seconds
    print(json.dumps({"imports": imported - started, "call": done - built, "train": train_seconds}))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
    else:
        main()
