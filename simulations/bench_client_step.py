"""Benchmark: the client's local training step against a plain PyTorch loop.

Same model (same initial weights), same batch size and sequence length, same device,
same optimizer and gradient clipping, measured side by side in one process. The two
arms alternate over several repeats and the median of each is reported, so drift of the
machine affects both alike. Goal: the client reaches >= 0.97 of the plain loop.

With `--ranks N` the client's step also runs on N ranks of one node (the same batch
split N ways, gradients all-reduced; gloo on CPU, NCCL and one GPU a rank on GPUs), in
the same run: the node's tokens/s and each rank's, against one rank.

    uv run python simulations/bench_client_step.py                       # CPU, small
    uv run python simulations/bench_client_step.py --ranks 2             # CPU, 2 ranks
    uv run python simulations/bench_client_step.py --preset 125m --seq-len 512 \\
        --batch-size 16 --device cuda                                    # GPU, bf16 autocast
"""

from __future__ import annotations

import copy
import statistics
import time

import numpy as np
import torch

from bench_common import bench_parser, describe, sync
from flowerbed.client.rank_processes import run_on_ranks
from flowerbed.client.schedule import Schedule
from flowerbed.client.trainer import LocalTrainer
from flowerbed.config import compose_config
from flowerbed.continual.pool import TrainingPool
from flowerbed.model import autocast, build_model, resolve_device
from flowerbed.model.ranks import Ranks


def plain_loop(
    model: torch.nn.Module, batches: torch.Tensor, device: torch.device, lr: float, clip: float
) -> float:
    """The loop anyone would write: forward, backward, clip, step. Returns seconds."""
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=lr, betas=(0.9, 0.95), fused=device.type == "cuda"
    )
    model.train()
    sync(device)
    start = time.perf_counter()
    for ids in batches:
        with autocast(device):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(device)
    return time.perf_counter() - start


def ranked_seconds(ranks: Ranks, device: torch.device, task: dict) -> list[float] | None:
    """The client's trainer on this rank: a warm-up round, then `repeats` timed rounds."""
    trainer = LocalTrainer(task["model"], task["train"], device, ranks)
    constant, rng = Schedule(0, 10**9), np.random.default_rng(0)
    trainer.train(task["pool"], constant, rng)
    seconds = [trainer.train(task["pool"], constant, rng).seconds for _ in range(task["repeats"])]
    return seconds if ranks.rank == 0 else None


def main() -> None:
    parser = bench_parser(__doc__, steps=10, repeats=5)
    parser.add_argument("--ranks", type=int, default=1, help="also train on N ranks of a node")
    args = parser.parse_args()

    device = resolve_device(args.device)
    base = build_model(compose_config(f"model={args.preset}").model, args.vocab, 0, seed=0)
    cfg = compose_config(
        f"train.local_steps={args.steps}",
        f"train.batch_size={args.batch_size}",
        "train.lr=1e-4",
        "train.warmup_steps=0",
        "train.min_lr_ratio=1.0",
    ).train
    rng = np.random.default_rng(0)
    tokens = rng.integers(
        0, args.vocab, size=(args.batch_size * args.steps * 4, args.seq_len)
    ).astype(np.int32)
    pool = TrainingPool.over(tokens)
    batches = (
        torch.from_numpy(tokens[: args.steps * args.batch_size].astype(np.int64))
        .view(args.steps, args.batch_size, -1)
        .to(device)
    )

    trainer = LocalTrainer(copy.deepcopy(base), cfg, device)
    constant = Schedule(0, 10**9)
    plain_model = copy.deepcopy(base).to(device)
    trainer.train(pool, constant, rng)  # warm-up: allocator, kernels, autotuning
    plain_loop(plain_model, batches, device, cfg.lr, cfg.grad_clip)

    client_s, plain_s = [], []
    for _ in range(args.repeats):
        client_s.append(trainer.train(pool, constant, rng).seconds)
        plain_s.append(plain_loop(plain_model, batches, device, cfg.lr, cfg.grad_clip))
    step_tokens = args.steps * args.batch_size * args.seq_len
    client_tps = step_tokens / statistics.median(client_s)
    plain_tps = step_tokens / statistics.median(plain_s)
    print(describe(args, base, device))
    print("| loop | tokens/s (median) |")
    print("|---|---|")
    print(f"| plain PyTorch | {plain_tps:,.0f} |")
    print(f"| flowerbed client | {client_tps:,.0f} |")
    print(f"ratio client / plain: {client_tps / plain_tps:.3f}")
    if args.ranks > 1:
        task = {"model": base, "train": cfg, "pool": pool, "repeats": args.repeats}
        threads = max(1, torch.get_num_threads() // args.ranks)
        seconds = run_on_ranks(ranked_seconds, task, args.ranks, device.type, threads, "a bench")
        node_tps = step_tokens / statistics.median(seconds)
        print("\n| ranks of one node | node tokens/s | per rank | threads a rank (CPU) |")
        print("|---|---|---|---|")
        print(f"| 1 | {client_tps:,.0f} | {client_tps:,.0f} | {torch.get_num_threads()} |")
        print(f"| {args.ranks} | {node_tps:,.0f} | {node_tps / args.ranks:,.0f} | {threads} |")
        print(f"ratio {args.ranks} ranks / 1 rank (node tokens/s): {node_tps / client_tps:.3f}")


if __name__ == "__main__":
    main()
