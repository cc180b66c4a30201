"""Opacus's noise step with every parameter's noise drawn in one call.

Book-keeping (and ghost clipping) leave the clipped sum in `p.grad`; Opacus's
fast-gradient-clipping optimizer then adds Gaussian noise per parameter, allocating each
time. This one draws all of it into one preallocated buffer.
"""

from __future__ import annotations

import torch
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.optimizers.optimizer_fast_gradient_clipping import DPOptimizerFastGradientClipping

from flowerbed.privacy.correlated_noise import CorrelatedNoise


class FusedNoiseOptimizer(DPOptimizerFastGradientClipping):
    """Opacus's fast-gradient-clipping optimizer with all noise drawn in one call into one
    preallocated buffer (Opacus draws per parameter, allocating each time), and the first
    physical chunk's gradient taken as the running sum rather than copied."""

    correlated: CorrelatedNoise | None = None
    """privacy.mechanism=banded: the draw becomes the step's correlated noise."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._sizes = [p.numel() for p in self.params]
        like = self.params[0] if self.params else torch.empty(0)
        self._noise = torch.empty(sum(self._sizes), device=like.device, dtype=like.dtype)

    def accumulate(self) -> None:
        for p in self.params:
            if p.summed_grad is None:
                p.summed_grad, p.grad = p.grad.data, None
            else:
                p.summed_grad.add_(p.grad.data)

    def add_noise(self) -> None:
        std = self.noise_multiplier * self.max_grad_norm
        if self.secure_mode:
            return super().add_noise()
        correlated = self.correlated if self.correlated and self.correlated.bands > 1 else None
        if std > 0:  # banded: drawn at unit scale, shaped, then scaled (`correlated_noise.py`)
            self._noise.normal_(0, 1.0 if correlated else std, generator=self.generator)
        else:
            self._noise.zero_()
        if correlated is not None:
            correlated.shape_(self._noise).mul_(std)
        for p, noise in zip(self.params, self._noise.split(self._sizes), strict=True):
            _check_processed_flag(p.summed_grad)
            p.grad = p.summed_grad.add_(noise.view_as(p))  # summed_grad is dropped after
            _mark_as_processed(p.summed_grad)
