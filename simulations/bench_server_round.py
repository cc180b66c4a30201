"""Benchmark: what a round costs the server, with clients that do no compute.

The real ServerApp (flowerbed's round engine, aggregation pipeline, validation and
checkpoints) runs a simulated federation on Flower's Simulation Engine whose ClientApps
echo the weights they receive: everything measured is the server's side of a round and
Flower's transport (encoding, sending, receiving, admitting and combining in torch,
loading the new weights, the
validation loss, the checkpoint: its snapshot; the write runs in the background). The
model is the 125m preset with a 32,000-token vocabulary (134M parameters), saved once to
a temporary folder and loaded as a pretrained model; data is the synthetic corpus with
the byte tokenizer. Each phase is timed by wrapping the function that does it;
`transport` is the rest of the round (Flower's send and receive). Goal (issue 12): 4 s
or less per round with 16-bit transport.

    uv run python simulations/bench_server_round.py                          # fp16, 5 rounds
    uv run python simulations/bench_server_round.py --dtype fp32 --rounds 4
    uv run python simulations/bench_server_round.py --clients 5 --combiner krum --faulty 1
    uv run python simulations/bench_server_round.py --clients 3 --secure   # SecAgg+

With `--secure` the round is SecAgg+'s four stages; each echo client masks a zero update
(quantize, one private and one pairwise mask per neighbour), so the round also holds the
clients' masking, which runs beside the server's work. `unmask` is the server rebuilding
and removing the masks. The report adds the bytes one client sends back (the masked
update under SecAgg+, the weights otherwise) and, under SecAgg+, each client's peak memory
while it answers a stage (resident memory above what it held when the stage began: the
echo client's update and its masking), beside the size of the update in fp32.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from flowerbed.client.node import Node
from flowerbed.client.secure import secure_aggregation_mod, with_update
from flowerbed.config import compose_config
from flowerbed.config.node_policy import accepting_all
from flowerbed.model import build_model, num_parameters
from flowerbed.model.transport import from_array_record
from flowerbed.protocol import EvaluateReply, TrainInstructions, TrainReply, global_weights
from flowerbed.run.prepare import prepare_run
from flowerbed.server import callbacks, engine, pipeline, secure_aggregation
from flowerbed.tracking import RunLayout

SECONDS: dict[str, list[float]] = defaultdict(list)


def timed(owner: object, name: str, phase: str) -> None:
    """Replace `owner.name` with itself plus a timer that adds to `phase` of this round."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            SECONDS[phase].append(time.perf_counter() - start)

    setattr(owner, name, wrapper)


def _memory_kib() -> dict[str, int]:
    """This process's resident memory now and at its peak since the last reset (KiB)."""
    status = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"{k}:\s+(\d+)", status).group(1)) for k in ("VmRSS", "VmHWM")}


def peak_memory(mod, log: Path):
    """`mod`, noting in `log` how far above its resident memory each call went: from the
    call's start (the whole stage), and from when the ClientApp's reply came back (the
    masking step alone). Linux: the peak is reset through /proc/self/clear_refs."""

    def measured(msg: Message, ctxt: Context, call_next) -> Message:
        marks: dict[str, int] = {}

        def app(m: Message, c: Context) -> Message:
            reply = call_next(m, c)
            now = _memory_kib()
            marks["app peak"], marks["masking start"] = now["VmHWM"], now["VmRSS"]
            Path("/proc/self/clear_refs").write_text("5")
            return reply

        Path("/proc/self/clear_refs").write_text("5")
        start = _memory_kib()["VmRSS"]
        reply = mod(msg, ctxt, app)
        peak = _memory_kib()["VmHWM"]
        if marks:
            row = {
                "stage": (max(peak, marks["app peak"]) - start) * 1024 / 1e6,
                "masking": (peak - marks["masking start"]) * 1024 / 1e6,
            }
            with log.open("a") as out:
                out.write(json.dumps(row) + "\n")
        return reply

    return measured


def _echo_node(context: Context) -> Node:
    """An echo client's node: it accepts what the coordinator asks."""
    partition = int(context.node_config["partition-id"])
    return Node(partition, Path("."), Path("."), "cpu", 1, accepting_all(), False)


def echo_client_app(memory_log: Path) -> ClientApp:
    """Clients that train nothing: each replies with the weights it received (under
    secure aggregation: a masked zero update, its peak memory noted in `memory_log`)."""
    app = ClientApp(mods=[peak_memory(secure_aggregation_mod(_echo_node), memory_log)])

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        job = TrainInstructions.from_content(msg.content)
        reply = TrainReply(
            partition_id=int(context.node_config["partition-id"]),
            num_examples=1,
            tokens=0,
            train_seconds=0.0,
            train_loss=0.0,
            weights=global_weights(msg.content),
        )
        if job.secure_max_weight is not None:
            received = from_array_record(global_weights(msg.content), job.transport_dtype)
            update = with_update(reply.to_content(), received, received, 1)
            return Message(update, reply_to=msg)
        return Message(reply.to_content(), reply_to=msg)

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        partition = int(context.node_config["partition-id"])
        reply = EvaluateReply(partition_id=partition, num_examples=1, heldout_loss=0.0)
        return Message(reply.to_content(), reply_to=msg)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dtype", default="fp16", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--preset", default="125m")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument(
        "--combiner",
        default="mean",
        choices=("mean", "trimmed_mean", "median", "krum", "multikrum"),
        help="the combine stage (its aggregate phase includes admission and the outer step)",
    )
    parser.add_argument("--faulty", type=int, help="combiner.faulty_clients (krum, median)")
    parser.add_argument("--secure", action="store_true", help="SecAgg+ (3 clients or more)")
    parser.add_argument(
        "--client-cpus",
        type=int,
        default=1,
        help="CPUs each simulated client holds (cores / this run at once; 2 on a 2-core "
        "machine runs them one at a time, which SecAgg+ at 125M needs to fit in 24 GiB)",
    )
    args = parser.parse_args()
    import flwr.simulation

    from flowerbed.server.app import make_server_app

    with tempfile.TemporaryDirectory() as tmp:
        base = build_model(compose_config(f"model={args.preset}").model, args.vocab, 0, seed=0)
        parameters = num_parameters(base)
        base.save_pretrained(Path(tmp) / "base")
        del base
        cfg = compose_config(
            f"model.pretrained={tmp}/base",
            "data=synthetic",
            "data.tokenizer=byte",
            f"data.cache_dir={tmp}/cache",
            "privacy=off",
            "continual=off",
            f"federation.num_clients={args.clients}",
            f"federation.rounds={args.rounds}",
            f"federation.transport_dtype={args.dtype}",
            "federation.fraction_evaluate=0",
            "train.eval_batches=1",
            "device=cpu",
            f"combiner={args.combiner}",
            *([f"combiner.faulty_clients={args.faulty}"] if args.faulty is not None else []),
            *(["federation.secure_aggregation=secaggplus"] if args.secure else []),
        )
        run_dir, memory_log = Path(tmp) / "run", Path(tmp) / "client_memory.jsonl"
        prepare_run(cfg, RunLayout(run_dir))
        timed(engine.RoundEngine, "exchange", "exchange")
        timed(engine.RoundEngine, "conclude", "conclude")
        timed(engine.RoundEngine, "val_loss", "validation")
        timed(engine, "to_array_record", "encode")
        timed(engine, "load_shared_state", "load new weights")
        timed(pipeline.AggregationPipeline, "aggregate", "aggregate")
        timed(pipeline.AggregationPipeline, "aggregate_sum", "aggregate")
        timed(secure_aggregation, "remove_masks", "unmask")
        timed(callbacks.Checkpoints, "on_round_trained", "checkpoint")
        flwr.simulation.run_simulation(
            server_app=make_server_app(cfg, run_dir),
            client_app=echo_client_app(memory_log),
            num_supernodes=args.clients,
            backend_config={"client_resources": {"num_cpus": args.client_cpus, "num_gpus": 0}},
        )
        sent = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
        peaks = (
            [json.loads(x) for x in memory_log.read_text().splitlines()]
            if (memory_log.exists())
            else []
        )
    report(args, parameters)
    report_client(sent, peaks if args.secure else [], parameters)


def report_client(sent: dict, peaks: list[dict[str, float]], parameters: int) -> None:
    """What one client sends back, and (SecAgg+) its peak memory in the collect stage."""
    back = sent["masked_bytes_per_client"] or sent["bytes_per_client"]
    print(f"| bytes one client sends | {back / 1e6:.1f} MB |")
    if peaks:
        stage, masking = (max(p[k] for p in peaks) for k in ("stage", "masking"))
        print(
            f"| client peak memory above its start: collect stage / masking step | "
            f"{stage:.0f} / {masking:.0f} MB (the fp32 update: {4 * parameters / 1e6:.0f} MB) |"
        )


def report(args: argparse.Namespace, parameters: int) -> None:
    """Median seconds per phase over the rounds after the first (the first warms up)."""
    exchange, conclude = SECONDS["exchange"], SECONDS["conclude"]
    rounds = SECONDS["round (engine)"] = [a + b for a, b in zip(exchange, conclude, strict=True)]
    per_round = {phase: s[-len(rounds) :] for phase, s in SECONDS.items()}
    # the initial validation loss (before round 1) is timed too; keep one per round
    per_round["validation"] = SECONDS["validation"][-len(rounds) :]
    later = slice(1, None) if len(rounds) > 1 else slice(None)
    median = {phase: statistics.median(s[later]) for phase, s in per_round.items()}
    inside = ("encode", "aggregate", "load new weights", "validation")
    if "unmask" in SECONDS:
        inside = (*inside, "unmask")
    median["transport (the rest)"] = median["round (engine)"] - sum(median[p] for p in inside)
    total = median["round (engine)"] + median["checkpoint"]
    print(
        f"\nserver round, {args.clients} echo clients, {args.preset} ({parameters:,} "
        f"parameters), {args.dtype} transport{', SecAgg+' if args.secure else ''}, "
        f"CPU ({torch.get_num_threads()} threads); "
        f"median of rounds 2..{len(rounds)}"
    )
    print("| phase | s |\n|---|---|")
    for phase in (*inside, "transport (the rest)", "checkpoint"):
        print(f"| {phase} | {median[phase]:.2f} |")
    print(f"| **round, checkpoint included** | **{total:.2f}** |")


if __name__ == "__main__":
    main()
