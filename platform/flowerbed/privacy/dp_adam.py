"""AdamW under DP-SGD without the noise's bias in its second moment (DP-AdamBC).

Under DP-SGD every coordinate of the gradient AdamW sees carries Gaussian noise of
standard deviation φ = σC/B (σ the noise multiplier, C the clipping norm, B the expected
batch). Adam's second moment then estimates g² + φ², not g²: where the noise dominates,
every coordinate's denominator is about φ and Adam's per-coordinate scaling flattens
into SGD with one step size (Tang et al., AAAI'24, arXiv 2312.14334). This AdamW
subtracts φ² from the bias-corrected second moment before the square root, with a floor
so that a coordinate whose estimate falls below the noise's variance is not divided by
nearly zero.

Why our own: no library has it (PyTorch's AdamW computes its denominator inside one
kernel, with no hook between v̂ and its square root). The state is AdamW's own (`step`,
`exp_avg`, `exp_avg_sq`), so kept inner state and checkpoints move freely between the two.
"""

from __future__ import annotations

import torch

FLOOR = 0.1
"""The corrected second moment's floor, as a share of the noise's variance φ²: a
coordinate with no signal above the noise is scaled by 1/(√0.1 φ) ≈ 3.2/φ, not 1/φ as
plain DP-Adam does, nor without bound (measured in simulations/dp_utility/)."""


class NoiseCorrectedAdamW(torch.optim.AdamW):
    """AdamW (decoupled weight decay) whose v̂ is max(v̂ − φ², FLOOR·φ²); φ is set once
    the round knows its expected batch (`noise_std`), and 0 leaves plain AdamW."""

    def __init__(self, params, **adamw) -> None:
        unsupported = [k for k in ("amsgrad", "maximize", "capturable") if adamw.get(k)]
        if unsupported:
            raise ValueError(f"NoiseCorrectedAdamW does not implement {', '.join(unsupported)}")
        super().__init__(params, **{**adamw, "foreach": False, "fused": False})
        self.noise_std = 0.0

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        variance = self.noise_std**2
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, decay, eps = group["lr"], group["weight_decay"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = float(state["step"])
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(p.grad, 1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                second = v / (1 - beta2**t)
                if variance > 0:
                    second.sub_(variance).clamp_(min=FLOOR * variance)
                p.mul_(1 - lr * decay)
                p.addcdiv_(m, second.sqrt_().add_(eps), value=-lr / (1 - beta1**t))
        return loss
