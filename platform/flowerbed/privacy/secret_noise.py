"""DP noise nobody but its key's holder can subtract: Gaussians from a ChaCha20 keystream.

torch's generators take a 64-bit seed, and its CPU Mersenne Twister keeps only the low 32
bits: correlating a node's update with the noise of each of the 2^32 candidate seeds picks
the true one out (about 25 core-hours), and then the coordinator subtracts every step's
noise. Here each release's noise comes from a 256-bit key (`NodeSecret.digest("noise",
nonce)`), through the keystream (`flowerbed.keystream`), turned into Gaussians by the
Box–Muller transform in torch on the noise's own device.

What remains is floating point: Box–Muller on 32-bit uniforms gives no value beyond 6.66
standard deviations, and float32 rounding makes the sample's low bits deviate from an
ideal Gaussian (Mironov 2012); torch.randn has the same kind of limits.

`privacy.noise_seed=run` keeps torch's generator seeded from the run (a 63-bit seed
anyone who knows the config can recompute): bit-identical tests and studies, no privacy.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from flowerbed.keystream import KeyStream

CHUNK = 1 << 22
"""Gaussians drawn per piece: bounds the temporaries (16 MiB of float32) at any size."""


class KeyedGaussian:
    """Standard Gaussians from one keystream, read front to back; `repr` hides the key.

    On a GPU the keystream of the next draw is made on the CPU, in a thread, while the GPU
    runs the step (`ahead`); the stream is read in the same order either way.
    """

    def __init__(self, key: bytes, ahead: bool | None = None) -> None:
        self.stream = KeyStream(key)
        self.ahead = ahead
        """Make the next draw's uniforms in the background (None: on GPUs only)."""
        self._spare = torch.empty(0)
        self._next: Future[torch.Tensor] | None = None
        self._pool: ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        return "KeyedGaussian(<hidden>)"

    def fill_(self, out: torch.Tensor, std: float) -> torch.Tensor:
        """Fill `out` (contiguous, any float dtype and device) with N(0, std²) noise."""
        if self.ahead is None:
            self.ahead = out.device.type == "cuda"
        flat = out.view(-1)
        chunk = max(flat.numel(), 1) if self.ahead else CHUNK  # ahead: one piece a step
        with _one_cpu_thread(out.device):
            for start in range(0, flat.numel(), chunk):
                self._normal_(flat[start : start + chunk], std)
        return out

    def _normal_(self, piece: torch.Tensor, std: float) -> None:
        """Box–Muller into `piece`: from each pair of uniforms a radius and an angle, whose
        cosine fills the first half and sine the second."""
        count = piece.numel()
        pairs = (count + 1) // 2
        u = self._uniforms(2 * pairs).to(piece.device)
        radius = u[:pairs].add_(1.0).mul_(2.0**-32).log_().mul_(-2.0 * std * std).sqrt_()
        angle = u[pairs:].mul_(2 * math.pi * 2.0**-32)
        first, second = piece[:pairs], piece[pairs:]
        first.copy_(torch.cos(angle).mul_(radius))
        second.copy_(angle.sin_()[: len(second)].mul_(radius[: len(second)]))

    def _uniforms(self, count: int) -> torch.Tensor:
        """The stream's next `count` words as float32 (exact below 2^24) on the CPU; with
        `ahead`, the same number after them is started in the background."""
        if self._next is not None:
            self._spare = _joined(self._spare, self._next.result())
            self._next = None
        if len(self._spare) < count:
            self._spare = _joined(self._spare, self._make(count - len(self._spare)))
        words, self._spare = self._spare[:count], self._spare[count:]
        if self.ahead:
            self._pool = self._pool or ThreadPoolExecutor(1, thread_name_prefix="noise")
            self._next = self._pool.submit(self._make, count)
        return words

    def _make(self, count: int) -> torch.Tensor:
        return torch.from_numpy(self.stream.words(count).astype(np.float32))


@contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """On the CPU, the transform's elementwise passes on one thread: measured on 2 cores,
    10M Gaussians took 64 ms on one torch thread and 300 ms on two (whose OpenMP
    hand-offs cost more than these memory-bound passes gain; torch.randn: 35 ms)."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _joined(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    return torch.cat([first, second]) if len(first) else second


@dataclass(frozen=True)
class NoiseKey:
    """Where one release's DP noise comes from: a secret 256-bit key, or a run seed."""

    key: bytes | None = field(default=None, repr=False)
    """The node's key for this release (`privacy.noise_seed=secret`)."""
    seed: int | None = None
    """A seed for torch's generator (`privacy.noise_seed=run`): repeatable, NOT private."""

    def generator(self, device: torch.device) -> torch.Generator | None:
        """The torch generator Opacus draws with (None: the noise comes from the key)."""
        if self.seed is None:
            return None
        return torch.Generator(device=device).manual_seed(self.seed)

    def optimizer_class(self, optimizer_class: type) -> type:
        """`optimizer_class` (an Opacus DP optimizer) drawing its noise from the key; the
        class itself when the noise comes from a seed."""
        if self.key is None:
            return optimizer_class
        gaussian = KeyedGaussian(self.key)

        class KeyedNoise(optimizer_class):
            def add_noise(self) -> None:
                add_keyed_noise(self, gaussian)

        return KeyedNoise


def add_keyed_noise(optimizer, gaussian: KeyedGaussian) -> None:
    """Opacus's noise step (`add_noise`) with the noise of every parameter drawn at once
    from `gaussian` into one buffer kept on the optimizer: p.grad = clipped sum + N(0, (σC)²)."""
    from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

    params = optimizer.params
    sizes = [p.numel() for p in params]
    noise = getattr(optimizer, "_noise", None)
    if noise is None or noise.numel() != sum(sizes):
        like = params[0].summed_grad
        noise = optimizer._noise = torch.empty(sum(sizes), device=like.device, dtype=like.dtype)
    std = optimizer.noise_multiplier * optimizer.max_grad_norm
    correlated = getattr(optimizer, "correlated", None)  # privacy.mechanism=banded
    if correlated is not None and correlated.bands > 1:  # shaped at unit scale, then scaled
        correlated.shape_(gaussian.fill_(noise, 1.0)).mul_(std)
    else:
        gaussian.fill_(noise, std)
    for p, piece in zip(params, noise.split(sizes), strict=True):
        _check_processed_flag(p.summed_grad)
        p.grad = p.summed_grad.add_(piece.view_as(p))  # summed_grad is dropped after
        _mark_as_processed(p.summed_grad)
