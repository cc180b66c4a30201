"""Benchmark: full fine-tuning against LoRA adapters: what trains, what travels, how fast.

Same base model (same weights), batch, sequence length and device for every arm: every
weight, LoRA rank 4 and rank 16 on the attention projections. For each: trainable
parameters, the bytes a client sends per round (Flower's ArrayRecord payload in fp32 and
bf16 transport), and the training step's tokens/s without DP and under DP-SGD (ghost
clipping), the arms alternating over the repeats in one process (median reported). Peak
memory as in bench_dp.py: CUDA's allocator per arm on a GPU, on CPU a child process per
arm. Goal (issue 14): LoRA's bytes per round at least 50x fewer than full at 125M.

    uv run python simulations/bench_adapters.py                                # CPU, small
    uv run python simulations/bench_adapters.py --preset 125m --bytes-only     # bytes at 125M
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys

import torch

from bench_common import bench_parser, describe
from bench_dp import Arm, child_peak_rss, own_peak_kib, setup
from flowerbed.config import compose_config
from flowerbed.model import record_nbytes, to_array_record
from flowerbed.model.adapter import add_adapter, shared_state

ADAPTERS = {"full": None, "LoRA r4": 4, "LoRA r16": 16}
STEPS = ("non-DP", "DP ghost")


def adapted(base: torch.nn.Module, rank: int | None) -> torch.nn.Module:
    """The base with rank-`rank` adapters (its own copy), or the base itself for `None`."""
    if rank is None:
        return base
    cfg = compose_config("adapter=lora", f"adapter.rank={rank}", f"adapter.alpha={2 * rank}")
    return add_adapter(copy.deepcopy(base), cfg.adapter)


def sent_bytes(model: torch.nn.Module, dtype: str) -> int:
    return record_nbytes(to_array_record(shared_state(model), dtype))


def main() -> None:
    parser = bench_parser(__doc__, steps=5, repeats=3)
    parser.add_argument("--bytes-only", action="store_true", help="no timing: sizes only")
    parser.add_argument("--only", help=argparse.SUPPRESS)
    args = parser.parse_args()
    base, batches, device = setup(args)
    models = {name: adapted(base, rank) for name, rank in ADAPTERS.items()}

    if args.only:  # a child measured for its peak memory
        adapter, step = args.only.split("|")
        Arm(step, models[adapter], device, args.batch_size).run(batches)
        print(f"VmHWM: {own_peak_kib()}")
        return

    print(describe(args, base, device))
    full = {dtype: sent_bytes(base, dtype) for dtype in ("fp32", "bf16")}
    print("| arm | trainable parameters | MB sent per round, fp32 | bf16 | fewer bytes than full |")
    print("|---|---|---|---|---|")
    for name, model in models.items():
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        fp32, bf16 = sent_bytes(model, "fp32"), sent_bytes(model, "bf16")
        print(
            f"| {name} | {trainable:,} | {fp32 / 1e6:,.3f} | {bf16 / 1e6:,.3f} "
            f"| {full['fp32'] / fp32:,.0f}x |"
        )
    if args.bytes_only:
        return

    arms = {(a, s): Arm(s, models[a], device, args.batch_size) for a in ADAPTERS for s in STEPS}
    peak: dict[tuple[str, str], float] = {}
    for key, arm in arms.items():  # warm-up, and the peak memory of each arm on a GPU
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        arm.run(batches)
        if device.type == "cuda":
            peak[key] = torch.cuda.max_memory_allocated(device) / 2**30
    seconds: dict[tuple[str, str], list[float]] = {key: [] for key in arms}
    for _ in range(args.repeats):
        for key, arm in arms.items():
            seconds[key].append(arm.run(batches))
    if device.type != "cuda":
        argv = sys.argv[1:]
        peak = {key: child_peak_rss("|".join(key), argv, __file__) for key in arms}

    tokens = args.steps * args.batch_size * args.seq_len
    rate = {key: tokens / statistics.median(s) for key, s in seconds.items()}
    reference = ("full", "non-DP")
    memory = "peak GiB allocated (CUDA)" if device.type == "cuda" else "peak GiB resident"
    print()
    print(f"| arm | step | tokens/s (median) | vs full non-DP | {memory} | vs full non-DP |")
    print("|---|---|---|---|---|---|")
    for (adapter, step), r in rate.items():
        print(
            f"| {adapter} | {step} | {r:,.0f} | {r / rate[reference]:.2f}x "
            f"| {peak[(adapter, step)]:.2f} | {peak[(adapter, step)] / peak[reference]:.2f}x |"
        )


if __name__ == "__main__":
    main()
