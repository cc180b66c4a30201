"""Benchmark: the client's local training step against a plain PyTorch loop.

Same model (same initial weights), same batch size and sequence length, same device,
same optimizer and gradient clipping, measured side by side in one process. The two
arms alternate over several repeats and the median of each is reported, so drift of the
machine affects both alike. Goal: the client reaches >= 0.97 of the plain loop.

    uv run python simulations/bench_client_step.py                       # CPU, small
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
from flowerbed.client.schedule import Schedule
from flowerbed.client.trainer import LocalTrainer
from flowerbed.config import compose_config
from flowerbed.continual.pool import TrainingPool
from flowerbed.model import autocast, build_model, resolve_device


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


def main() -> None:
    parser = bench_parser(__doc__, steps=10, repeats=5)
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


if __name__ == "__main__":
    main()
