"""Benchmark: the DP-SGD step against the non-DP step, for ghost and hooks clipping.

Same model (same initial weights), batch, sequence length, device and optimizer; the
arms alternate over several repeats in one process and the median of each is reported.
Peak memory: `torch.cuda.max_memory_allocated` per arm on a GPU; on CPU each arm also
runs alone in a child process and its peak resident memory is read with `wait4`.
Goal (issue 3): DP >= 0.85 of non-DP throughput at <= 1.1x the memory.

    uv run python simulations/bench_dp.py                                    # CPU, small
    uv run python simulations/bench_dp.py --preset 125m --seq-len 512 --batch-size 16 --device cuda
"""

from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import sys
import time

import torch

from bench_common import bench_parser, describe, sync
from flowerbed.client.trainer import make_optimizer
from flowerbed.config import compose_config
from flowerbed.model import autocast, build_model, resolve_device
from flowerbed.privacy.dp_sgd import PrivateStep

ARMS = ("non-DP", "DP ghost", "DP bookkeeping", "DP hooks")


class Arm:
    """One way of taking a training step on its own copy of the model."""

    def __init__(self, name: str, base: torch.nn.Module, device: torch.device, batch: int) -> None:
        self.name, self.device = name, device
        self.model = copy.deepcopy(base).to(device)
        self.optimizer = make_optimizer(self.model, compose_config("train.lr=1e-4").train, device)
        self.private = None
        if name != "non-DP":
            self.private = PrivateStep(
                self.model,
                self.optimizer,
                noise_multiplier=1.0,
                max_grad_norm=1.0,
                expected_batch_size=batch,
                mode=name.split()[1],
                max_physical_batch=0,
            )

    def run(self, batches: torch.Tensor) -> float:
        """Seconds for one step per batch."""
        sync(self.device)
        start = time.perf_counter()
        for ids in batches:
            if self.private is not None:
                self.private.step(ids)
                continue
            with autocast(self.device):
                loss = self.model(input_ids=ids, labels=ids).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        sync(self.device)
        return time.perf_counter() - start


def setup(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.Tensor, torch.device]:
    device = resolve_device(args.device)
    base = build_model(compose_config(f"model={args.preset}").model, args.vocab, 0, seed=0)
    g = torch.Generator().manual_seed(0)
    batches = torch.randint(0, args.vocab, (args.steps, args.batch_size, args.seq_len), generator=g)
    return base, batches.to(device), device


def child_peak_rss(arm: str, argv: list[str], script: str = __file__) -> float:
    """GiB of peak resident memory of a fresh process of `script` that runs only `arm`.

    The child reports its own VmHWM: `ru_maxrss` would carry over the forked parent's peak.
    """
    out = subprocess.run(
        [sys.executable, script, *argv, "--only", arm], capture_output=True, text=True, check=True
    ).stdout
    return int(out.split("VmHWM:")[1].split()[0]) / 2**20


def own_peak_kib() -> int:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmHWM:")).split()[1])


def main() -> None:
    parser = bench_parser(__doc__, steps=5, repeats=3)
    parser.add_argument("--only", choices=ARMS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    base, batches, device = setup(args)

    if args.only:  # a child measured for its peak memory
        Arm(args.only, base, device, args.batch_size).run(batches)
        print(f"VmHWM: {own_peak_kib()}")
        return

    arms = [Arm(name, base, device, args.batch_size) for name in ARMS]
    peak: dict[str, float] = {}
    for arm in arms:  # warm-up, and the peak memory of each arm on a GPU
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        arm.run(batches)
        if device.type == "cuda":
            peak[arm.name] = torch.cuda.max_memory_allocated(device) / 2**30
    seconds: dict[str, list[float]] = {arm.name: [] for arm in arms}
    for _ in range(args.repeats):
        for arm in arms:
            seconds[arm.name].append(arm.run(batches))
    if device.type != "cuda":
        argv = [a for a in sys.argv[1:]]
        peak = {name: child_peak_rss(name, argv) for name in ARMS}

    tokens = args.steps * args.batch_size * args.seq_len
    rate = {name: tokens / statistics.median(s) for name, s in seconds.items()}
    memory = (
        "peak GiB allocated (CUDA)"
        if device.type == "cuda"
        else "peak GiB resident (whole process)"
    )
    print(describe(args, base, device))
    print(f"| step | tokens/s (median) | vs non-DP | {memory} | vs non-DP |")
    print("|---|---|---|---|---|")
    for name in ARMS:
        print(
            f"| {name} | {rate[name]:,.0f} | {rate[name] / rate['non-DP']:.2f}x | "
            f"{peak[name]:.2f} | {peak[name] / peak['non-DP']:.2f}x |"
        )


if __name__ == "__main__":
    main()
