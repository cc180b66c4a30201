"""A client's fixed cost per round: what a Message costs besides the training steps.

Under the Deployment Engine every Message starts a fresh ClientApp process, so imports,
model build, and data and state loading are paid every round. This sends real Messages
to the real ClientApp `train` function, each in a fresh process, over one client's life
(2 experiences, 2 rounds each, continual replay), and splits each process's wall time:

- imports: Python, torch, transformers, Flower and flowerbed's client modules;
- held-out evaluation: from round 2 on, the train Message asks for the held-out losses
  of the weights it brings, as the server asks every node sampled for evaluation (one
  Message per round); `train.eval_batches` batches per experience seen;
- in the call, besides training and evaluation: model build, data and state load, and
  what is imported lazily (Opacus under DP, Avalanche when the buffer takes in a new
  experience), the privacy calibration (once in a client's life) and the ledger.

The server's part (the global weights and settings) is built once, up front, and each
process only reads it from disk before its Message is made. The round waits for the
reply; the process's exit (Python tearing down torch and transformers, about 1.3 s
here) comes after it and is reported apart.

With `--ranks N` every round also runs on a node of N ranks (`ranks=N` in its node
config), side by side: the difference is what starting and joining the workers adds.

    uv run python simulations/bench_client_fixed_cost.py [--preset small] [--ranks 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
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
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of each round, from the same state"
    )
    parser.add_argument("--ranks", type=int, default=1, help="also run each round on N ranks")
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
        print(
            f"preset {args.preset}, {args.local_steps} local steps, CPU, a fresh process each; "
            f"median of {args.repeats} runs of each round"
        )
        print(
            "| round | ranks | until the reply s | imports s | in the call, besides training "
            "and evaluation s | held-out evaluation s | training s | **besides training and "
            "evaluation s** | process exit s |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        state = layout.client_state(0)
        state.mkdir(parents=True, exist_ok=True)
        added = []
        for round_, privacy, label in ROUNDS:
            fixed = {}
            start = (
                Path(tempfile.mkdtemp()) / "state"
            )  # the state every run of the round starts from
            shutil.copytree(state, start)
            for ranks in sorted({1, args.ranks}):
                m = median_run(run_dir, state, start, privacy, round_, args.repeats, ranks)
                fixed[ranks] = m["fixed"]
                print(
                    f"| {label} | {ranks} | {m['until_reply']:.1f} | {m['imports']:.1f} "
                    f"| {m['besides']:.1f} | {m['heldout']:.1f} | {m['train']:.1f} "
                    f"| **{m['fixed']:.1f}** | {m['exit']:.1f} |"
                )
            shutil.rmtree(start.parent)  # the last run's state is where the next round starts
            added.append(fixed[args.ranks] - fixed[1])
        if args.ranks > 1:
            print(
                f"starting {args.ranks} ranks adds {statistics.median(added):.1f} s to a round's "
                f"fixed cost (median over the rounds; {min(added):.1f} to {max(added):.1f} s)"
            )


def median_run(
    run_dir: Path, state: Path, start: Path, privacy: str, round_: int, repeats: int, ranks: int
) -> dict[str, float]:
    """`run_child` `repeats` times, each from the client state `start`; the median of every
    figure (this machine's timings vary by a third from run to run)."""
    runs = []
    for _ in range(repeats):
        shutil.rmtree(state)
        shutil.copytree(start, state)
        t, until_reply, exit_seconds = run_child(run_dir, privacy, round_, ranks)
        runs.append(
            t
            | {
                "until_reply": until_reply,
                "exit": exit_seconds,
                "besides": t["call"] - t["train"] - t["heldout"],
                "fixed": until_reply - t["train"] - t["heldout"],
            }
        )
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def run_child(run_dir: Path, privacy: str, round_: int, ranks: int) -> tuple[dict, float, float]:
    """The child's timings, the seconds until its reply, and the seconds it then takes to
    exit (the interpreter's teardown, after the reply has left: no round waits for it)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as errors:
        child = subprocess.Popen(
            [sys.executable, __file__, "--child", str(run_dir), privacy, str(round_), str(ranks)],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
        timings = None
        for line in child.stdout:
            if line.startswith("{"):
                timings, until_reply = json.loads(line), time.perf_counter() - started
        child.wait()
        if child.returncode != 0 or timings is None:
            errors.seek(0)
            sys.exit(f"round {round_} failed:\n{errors.read()[-3000:]}")
    return timings, until_reply, time.perf_counter() - started - until_reply


def child(run_dir: Path, privacy: str, round_: int, ranks: int) -> None:
    """One train Message through the ClientApp in this fresh process; print timings."""
    started = time.perf_counter()
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from flowerbed.client import local_round
    from flowerbed.client.app import app
    from flowerbed.model.transport import to_array_record
    from flowerbed.protocol import ARRAYS, CONFIG, SERVER_ROUND, TrainReply, ask_heldout
    from flowerbed.tracking import RunLayout

    imported = time.perf_counter()
    heldout_seconds = []
    heldout_losses = local_round.heldout_losses

    def timed_heldout(*args, **kwargs):
        start = time.perf_counter()
        try:
            return heldout_losses(*args, **kwargs)
        finally:
            heldout_seconds.append(time.perf_counter() - start)

    local_round.heldout_losses = timed_heldout
    TaskIdentity.run_id = TaskIdentity.task_id = TaskIdentity.node_id = 1  # as Flower's runtime
    from safetensors.torch import load_file

    settings = ConfigRecord(json.loads((run_dir / f"settings-{privacy}.json").read_text()))
    settings[SERVER_ROUND] = round_
    arrays = to_array_record(load_file(run_dir / "weights.safetensors"), "fp32")
    message = Message(
        RecordDict({ARRAYS: arrays, CONFIG: settings}), dst_node_id=1, message_type="train"
    )
    if round_ > 1:
        message = ask_heldout(message)
    layout = RunLayout(run_dir)
    node_config = {
        "partition-id": 0,
        "data-dir": str(layout.client_data(0)),
        "state-dir": str(layout.client_state(0)),
        "ranks": ranks,
        "require-dp": False,  # the plain arms train without DP
    }  # as a SuperNode's --node-config names them
    context = Context(
        run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={}
    )
    built = time.perf_counter()
    reply = app(message, context)
    done = time.perf_counter()
    train_seconds = TrainReply.from_content(reply.content).train_seconds
    timings = {"imports": imported - started, "call": done - built, "train": train_seconds}
    print(json.dumps(timings | {"heldout": sum(heldout_seconds)}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        main()
