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
from dataclasses import dataclass, field

import numpy as np
import torch

from flowerbed.keystream import KeyStream

CHUNK = 1 << 22
"""Gaussians drawn per piece: bounds the temporaries (16 MiB of float32) at any size."""


class KeyedGaussian:
    """Standard Gaussians from one keystream, read front to back; `repr` hides the key."""

    def __init__(self, key: bytes) -> None:
        self.stream = KeyStream(key)

    def __repr__(self) -> str:
        return "KeyedGaussian(<hidden>)"

    def fill_(self, out: torch.Tensor, std: float) -> torch.Tensor:
        """Fill `out` (contiguous, any float dtype and device) with N(0, std²) noise."""
        flat = out.view(-1)
        for start in range(0, flat.numel(), CHUNK):
            piece = flat[start : start + CHUNK]
            piece.copy_(self._normal(piece.numel(), std, out.device))
        return out

    def _normal(self, count: int, std: float, device: torch.device) -> torch.Tensor:
        """`count` Gaussians by Box–Muller: a radius from one uniform, an angle from another."""
        pairs = (count + 1) // 2
        uniforms = self.stream.words(2 * pairs).astype(np.float32)  # exact below 2^24
        u = torch.from_numpy(uniforms).to(device)
        radius = u[:pairs].add_(1.0).mul_(2.0**-32).log_().mul_(-2.0).sqrt_().mul_(std)
        angle = u[pairs:].mul_(2 * math.pi * 2.0**-32)
        return torch.cat([radius * torch.cos(angle), radius.mul_(angle.sin_())])[:count]


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
    gaussian.fill_(noise, optimizer.noise_multiplier * optimizer.max_grad_norm)
    for p, piece in zip(params, noise.split(sizes), strict=True):
        _check_processed_flag(p.summed_grad)
        p.grad = p.summed_grad.add_(piece.view_as(p))  # summed_grad is dropped after
        _mark_as_processed(p.summed_grad)
