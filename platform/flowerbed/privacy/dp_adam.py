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
plain DP-Adam does, nor without bound. Chosen, not tuned: simulations/dp_utility/ measured
this floor only."""


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
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._update(group, params, [p.grad for p in params], variance)
        return loss

    def _update(
        self, group: dict, params: list[torch.Tensor], grads: list, variance: float
    ) -> None:
        """One step for a group's parameters, each pass over all of them in one call."""
        beta1, beta2 = group["betas"]
        lr, decay, eps = group["lr"], group["weight_decay"], group["eps"]
        states = [self.state[p] for p in params]
        for p, state in zip(params, states, strict=True):
            if not state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
        m = [state["exp_avg"] for state in states]
        v = [state["exp_avg_sq"] for state in states]
        steps = [float(state["step"]) for state in states]
        torch._foreach_lerp_(m, grads, 1 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, grads, grads, value=1 - beta2)
        second = torch._foreach_div(v, [1 - beta2**t for t in steps])
        if variance > 0:
            torch._foreach_sub_(second, variance)
            torch._foreach_clamp_min_(second, FLOOR * variance)
        torch._foreach_sqrt_(second)
        torch._foreach_add_(second, eps)
        torch._foreach_mul_(params, 1 - lr * decay)
        torch._foreach_addcdiv_(params, m, second, [-lr / (1 - beta1**t) for t in steps])
