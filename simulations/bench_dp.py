"""Benchmark: the DP-SGD step against the non-DP step, for ghost, bookkeeping and hooks,
and book-keeping for documents (units of `--blocks-per-unit` blocks) against sequences.

Same model (same initial weights), batch, sequence length, device and optimizer; the
arms alternate over several repeats in one process and the median of each is reported.
Peak memory: `torch.cuda.max_memory_allocated` per arm on a GPU; on CPU each arm also
runs alone in a child process and its peak resident memory is read from /proc.
A second table splits the non-DP and the bookkeeping step into phases (median ms), so
where the remaining gap goes is visible. Goal (issue 12): bookkeeping >= 0.75x non-DP
tokens/s at <= 1.2x its memory. The DP arms draw their noise as a node does by default,
from a secret 256-bit key (`privacy/secret_noise.py`); a third table times that noise
for the model's parameters against `torch.randn` from a seeded generator. The banded arm
shapes each step's draw with the kept noise of the last bands - 1 steps (privacy.mechanism=banded).

    uv run python simulations/bench_dp.py                                    # CPU, small
    uv run python simulations/bench_dp.py --preset 125m --seq-len 512 --batch-size 16 --device cuda
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import time

import torch

from bench_common import bench_parser, describe, sync
from flowerbed.client.trainer import make_optimizer
from flowerbed.config import compose_config
from flowerbed.model import autocast, build_model, resolve_device
from flowerbed.privacy.banded import strategy
from flowerbed.privacy.correlated_noise import CorrelatedNoise
from flowerbed.privacy.dp_adam import NoiseCorrectedAdamW
from flowerbed.privacy.dp_sgd import PrivateStep, per_sequence_loss
from flowerbed.privacy.secret_noise import KeyedGaussian, NoiseKey

ARMS = (
    "non-DP",
    "DP ghost",
    "DP bookkeeping",
    "DP hooks",
    "DP bookkeeping per document",
    "DP bookkeeping bias-corrected Adam",
    "DP bookkeeping banded noise",
)
BANDS = 8
"""The banded arm's bands: 7 kept noise vectors, each step's draw shaped by all of them."""


class Arm:
    """One way of taking a training step on its own copy of the model."""

    def __init__(
        self, name: str, base: torch.nn.Module, device: torch.device, batch: int, per_unit: int
    ) -> None:
        self.name, self.device = name, device
        self.model = copy.deepcopy(base).to(device)
        corrected = name.endswith("bias-corrected Adam")  # train.dp_adam_bias_correction
        train = compose_config("train.lr=1e-4", f"train.dp_adam_bias_correction={corrected}").train
        self.optimizer = make_optimizer(self.model, train, device, private=name != "non-DP")
        if isinstance(self.optimizer, NoiseCorrectedAdamW):
            self.optimizer.noise_std = 1.0 / batch  # σ C / B of the arm's step
        self.private, self.groups = None, None
        if name.endswith("per document"):  # the same rows, as documents of `per_unit` blocks
            self.groups = torch.arange(batch, device=device) // per_unit
        if name != "non-DP":
            self.private = PrivateStep(
                self.model,
                self.optimizer,
                noise_multiplier=1.0,
                max_grad_norm=1.0,
                expected_batch_size=batch if self.groups is None else -(-batch // per_unit),
                mode=name.split()[1],
                max_physical_batch=0,
                noise=NoiseKey(key=os.urandom(32)),  # a node's default: secret noise
                correlated=CorrelatedNoise(strategy(BANDS, 1000)) if "banded" in name else None,
            )

    def run(self, batches: torch.Tensor) -> float:
        """Seconds for one step per batch."""
        sync(self.device)
        start = time.perf_counter()
        for ids in batches:
            if self.private is not None:
                self.private.step(ids, self.groups)
                continue
            with autocast(self.device):
                loss = self.model(input_ids=ids, labels=ids).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        sync(self.device)
        return time.perf_counter() - start


class Phases:
    """Wall-clock milliseconds of each phase of a step, synchronised at every boundary."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.ms = device, {}

    def __call__(self, name: str) -> None:
        sync(self.device)
        now = time.perf_counter()
        if name != "start":
            self.ms.setdefault(name, []).append(1000 * (now - self.last))
        self.last = now


def step_in_phases(arm: Arm, ids: torch.Tensor, clock: Phases) -> None:
    """One step of `arm` (non-DP or bookkeeping), the same work as `Arm.run`, with a clock
    read between phases (the non-DP loss here is the per-sequence one, averaged)."""
    clock("start")
    positions = torch.arange(ids.shape[1], device=ids.device).repeat(ids.shape[0], 1)
    with autocast(arm.device):
        logits = arm.model(input_ids=ids, position_ids=positions).logits
    clock("forward")
    loss = per_sequence_loss(logits, ids)
    clock("per-sequence loss")
    if arm.private is None:
        loss.mean().backward()
        clock("backward")
        torch.nn.utils.clip_grad_norm_(arm.model.parameters(), 1.0)
        arm.optimizer.step()
    else:
        hooks, optimizer = arm.private.hooks, arm.private.optimizer
        grads = hooks.output_grads(loss)
        clock("backward")
        scale = hooks.clip_factors(grads)
        clock("per-sequence norms")
        hooks.add_clipped(grads, scale)
        clock("clipped, summed gradients")
        optimizer.signal_skip_step(do_skip=False)
        optimizer.pre_step()
        clock("noise")
        optimizer.original_optimizer.step()
        optimizer.zero_grad(set_to_none=True)  # the DP optimizer's: clears the running sums
    arm.optimizer.zero_grad(set_to_none=True)
    clock("optimizer step")


def phase_table(arms: list[Arm], batches: torch.Tensor, repeats: int) -> str:
    """Median ms per phase, non-DP and bookkeeping side by side (after a warm-up step)."""
    clocks = {arm.name: Phases(arm.device) for arm in arms}
    for repeat in range(repeats + 1):
        for arm in arms:
            for ids in batches:
                step_in_phases(arm, ids, clocks[arm.name] if repeat else Phases(arm.device))
    names = list(clocks["DP bookkeeping"].ms)
    median = {a: {k: statistics.median(v) for k, v in c.ms.items()} for a, c in clocks.items()}
    rows = ["", "| phase | non-DP ms | bookkeeping ms | difference ms |", "|---|---|---|---|"]
    for name in [*names, "total"]:
        plain, private = (
            (sum(m.values()) for m in median.values())
            if name == "total"
            else (median[a].get(name, 0.0) for a in median)
        )
        rows.append(f"| {name} | {plain:.0f} | {private:.0f} | {private - plain:+.0f} |")
    return "\n".join(rows)


def noise_table(model: torch.nn.Module, device: torch.device, repeats: int) -> str:
    """Median ms to draw one step's noise for every trainable parameter: torch.randn from a
    seeded generator against the keyed Gaussian (ChaCha20 keystream, Box–Muller)."""
    size = sum(p.numel() for p in model.parameters() if p.requires_grad)
    buffer = torch.empty(size, device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    keyed = KeyedGaussian(os.urandom(32))
    draws = {
        "torch.randn (seeded generator)": lambda: buffer.normal_(0, 1, generator=generator),
        "keyed Gaussian (ChaCha20, Box–Muller)": lambda: keyed.fill_(buffer, 1.0),
    }
    ms: dict[str, list[float]] = {name: [] for name in draws}
    for repeat in range(repeats + 1):
        for name, draw in draws.items():
            sync(device)
            start = time.perf_counter()
            draw()
            sync(device)
            if repeat:  # the first is a warm-up
                ms[name].append(1e3 * (time.perf_counter() - start))
    base = statistics.median(ms["torch.randn (seeded generator)"])
    rows = ["", f"| noise for {size:,} parameters | ms (median) | vs torch.randn |"]
    rows.append("|---|---|---|")
    for name, values in ms.items():
        median = statistics.median(values)
        rows.append(f"| {name} | {median:.1f} | {median / base:.2f}x |")
    return "\n".join(rows)


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
    parser.add_argument(
        "--blocks-per-unit", type=int, default=4, help="blocks of one document (the unit arm)"
    )
    args = parser.parse_args()
    base, batches, device = setup(args)

    if args.only:  # a child measured for its peak memory
        Arm(args.only, base, device, args.batch_size, args.blocks_per_unit).run(batches)
        print(f"VmHWM: {own_peak_kib()}")
        return

    arms = [Arm(name, base, device, args.batch_size, args.blocks_per_unit) for name in ARMS]
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
    phases = phase_table([arms[0], arms[ARMS.index("DP bookkeeping")]], batches, args.repeats)
    print(describe(args, base, device))
    print(f"| step | tokens/s (median) | vs non-DP | {memory} | vs non-DP |")
    print("|---|---|---|---|---|")
    for name in ARMS:
        print(
            f"| {name} | {rate[name]:,.0f} | {rate[name] / rate['non-DP']:.2f}x | "
            f"{peak[name]:.2f} | {peak[name] / peak['non-DP']:.2f}x |"
        )
    unit, sequence = rate["DP bookkeeping per document"], rate["DP bookkeeping"]
    print(
        f"\nbook-keeping per document ({args.blocks_per_unit} blocks each) vs per sequence, "
        f"the same rows: {unit / sequence:.2f}x tokens/s, "
        f"{peak['DP bookkeeping per document'] / peak['DP bookkeeping']:.2f}x memory"
    )
    corrected = rate["DP bookkeeping bias-corrected Adam"]
    print(f"bias-corrected AdamW vs AdamW, the same DP step: {corrected / sequence:.2f}x tokens/s")
    banded = rate["DP bookkeeping banded noise"]
    print(
        f"banded noise ({BANDS} bands) vs DP-SGD, the same step: {banded / sequence:.2f}x tokens/s"
    )
    print(phases)
    print(noise_table(base, device, max(args.repeats, 5)))


if __name__ == "__main__":
    main()
