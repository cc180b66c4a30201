"""Book-keeping DP-SGD (Bu et al., ICML 2023): per-sequence clipping in one backward pass.

Ghost clipping runs two backward passes: one for the per-sequence norms, one for the
clipped gradient. Book-keeping runs one, and no weight gradient is ever computed by
autograd:
- forward hooks keep each trainable layer's input (a reference to what autograd saves);
- one `torch.autograd.grad` call asks only for the gradients of those layers' *outputs*;
- each layer turns its input and output gradient into per-sequence squared norms, by the
  ghost norm (Gram matrices, T^2 (d_in + d_out)) or the explicit per-sample gradient
  (T d_in d_out), whichever costs fewer FLOPs for this shape;
- with every norm known, each layer writes its clipped, summed gradient in one matmul.

The result is `p.grad = sum_i c_i grad_i`, exactly what ghost clipping's second pass
leaves, so Opacus's fast-gradient-clipping optimizer adds the noise and steps as usual
(`fused_noise.FusedNoiseOptimizer` draws that noise in one call). Linear (LoRA's too),
Embedding and Llama's RMSNorm are covered; any other trainable layer is named at start.

Units (a document, a person) generalise the per-layer norms to groups of sequences: the
norm of a sum of per-sequence gradients needs the cross terms within a group only. The
ghost norm stacks a unit's blocks as one long sequence (its Gram matrices then hold the
cross terms); the explicit per-sample gradient, the bias and RMSNorm's gradient are
summed per unit before the norm. Scaling each block by its unit's factor gives the
clipped sum, so that part is unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from flowerbed.privacy.units import Groups


def _add_grad(p: nn.Parameter, grad: torch.Tensor) -> None:
    grad = grad.to(p.dtype)
    p.grad = grad if p.grad is None else p.grad.add_(grad)


def _trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters(recurse=False) if p.requires_grad]


def _as_sequences(x: torch.Tensor) -> torch.Tensor:
    """[batch, tokens, width] (a layer applied to one vector per sample has one token)."""
    return x if x.dim() == 3 else x.reshape(x.shape[0], -1, x.shape[-1])


class _Layer:
    """One trainable layer: what its forward pass saw, and its per-sequence gradients."""

    def __init__(self, name: str, module: nn.Module) -> None:
        self.name, self.module = name, module
        self.inputs: torch.Tensor | None = None
        self.output: torch.Tensor | None = None

    def capture(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if self.output is not None:
            raise RuntimeError(
                f"privacy.grad_sample_mode=bookkeeping: layer {self.name} ran twice in one "
                "forward pass, which it cannot clip; use privacy.grad_sample_mode=ghost or hooks"
            )
        self.inputs, self.output = inputs[0].detach(), output

    def release(self) -> None:
        self.inputs = self.output = None


class _Linear(_Layer):
    def __init__(self, name: str, module: nn.Linear) -> None:
        super().__init__(name, module)
        self.weight = module.weight if module.weight.requires_grad else None
        bias = module.bias
        self.bias = bias if bias is not None and bias.requires_grad else None

    def _operands(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Input and output gradient as [batch, tokens, width], in the output's dtype (under
        autocast a layer may see fp32 and compute in bf16, as its backward would)."""
        return _as_sequences(self.inputs).to(g.dtype), _as_sequences(g)

    def squared_norms(self, g: torch.Tensor, grams: dict, units: Groups | None) -> torch.Tensor:
        a, g = self._operands(g)
        tokens, d_in, d_out = a.shape[1], a.shape[2], g.shape[2]
        span = tokens * (units.width if units is not None else 1)  # tokens a unit's norm sees
        norms = torch.zeros(g.shape[0] if units is None else units.count, device=g.device)
        if self.weight is not None and span * (d_in + d_out) < d_in * d_out:  # ghost norm
            x = self.inputs  # q, k and v (gate and up) read the same input: one Gram matrix
            key = (x.data_ptr(), x.shape, x.stride(), x.dtype)  # all inputs live: no reuse
            if units is not None:  # a unit's blocks side by side: its cross terms count
                a, g = units.stack(a), units.stack(g)
            if key not in grams:
                grams[key] = torch.bmm(a, a.mT).float()
            norms += (grams[key] * torch.bmm(g, g.mT).float()).sum(dim=(1, 2))
        elif self.weight is not None:  # the explicit per-sample gradient, dropped once measured
            norms += _per_unit(torch.bmm(g.mT, a).float(), units).pow(2).sum(dim=(1, 2))
        if self.bias is not None:
            norms += _per_unit(g.sum(dim=1).float(), units).pow(2).sum(dim=1)
        return norms

    def add_clipped(self, g: torch.Tensor, scale: torch.Tensor) -> None:
        a, g = self._operands(g)
        scale = scale[:, None, None]
        if self.bias is not None:
            _add_grad(self.bias, (g * scale.to(g.dtype)).sum(dim=(0, 1)))
        if self.weight is not None:  # scale the narrower side: the lm_head's g is vocab-wide
            if a.shape[-1] <= g.shape[-1]:
                a = a * scale.to(a.dtype)
            else:
                g = g * scale.to(g.dtype)
            _add_grad(self.weight, g.reshape(-1, g.shape[-1]).mT @ a.reshape(-1, a.shape[-1]))


class _Embedding(_Layer):
    def _masked(self, g: torch.Tensor) -> torch.Tensor:
        pad = self.module.padding_idx  # autograd leaves the padding row's gradient at zero
        return g if pad is None else g * (self.inputs != pad)[..., None].to(g.dtype)

    def squared_norms(self, g: torch.Tensor, grams: dict, units: Groups | None) -> torch.Tensor:
        ids, g = self.inputs, self._masked(g)
        if units is not None:  # a unit's blocks side by side (zero gradient where none)
            ids, g = units.stack(ids), units.stack(g)
        same_token = ids[:, :, None] == ids[:, None, :]
        return (torch.bmm(g, g.mT).float() * same_token).sum(dim=(1, 2))

    def add_clipped(self, g: torch.Tensor, scale: torch.Tensor) -> None:
        g = self._masked(g) * scale.to(g.dtype)[:, None, None]
        weight = self.module.weight
        grad = torch.zeros_like(weight).index_add_(
            0, self.inputs.reshape(-1), g.reshape(-1, g.shape[-1]).to(weight.dtype)
        )
        _add_grad(weight, grad)


class _RMSNorm(_Layer):
    """Llama's RMSNorm, `weight * normalised(x)`: per-sample gradients are [batch, width]."""

    def squared_norms(self, g: torch.Tensor, grams: dict, units: Groups | None) -> torch.Tensor:
        x = self.inputs.float()
        normalised = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.module.variance_epsilon)
        self.per_sample = (g * normalised.to(self.inputs.dtype)).float().sum(dim=1)
        return _per_unit(self.per_sample, units).pow(2).sum(dim=1)

    def add_clipped(self, g: torch.Tensor, scale: torch.Tensor) -> None:
        _add_grad(self.module.weight, (self.per_sample * scale[:, None]).sum(dim=0))

    def release(self) -> None:
        super().release()
        self.per_sample = None


def _per_unit(per_sequence: torch.Tensor, units: Groups | None) -> torch.Tensor:
    """Per-sequence gradients summed per unit (as they are for sequence-level DP)."""
    return per_sequence if units is None else units.sum(per_sequence)


def _layer_for(name: str, module: nn.Module) -> _Layer | None:
    if type(module) is nn.Linear:
        return _Linear(name, module)
    if type(module) is nn.Embedding and not (module.max_norm or module.scale_grad_by_freq):
        return _Embedding(name, module)
    if type(module) is LlamaRMSNorm:
        return _RMSNorm(name, module)
    return None


class Bookkeeping:
    """Hooks on `model`'s trainable layers; `backward` leaves the clipped sum in `p.grad`."""

    def __init__(self, model: nn.Module, max_grad_norm: float) -> None:
        self.max_grad_norm = max_grad_norm
        self.layers: list[_Layer] = []
        unsupported = []
        for name, module in model.named_modules():
            if not _trainable(module):
                continue
            layer = _layer_for(name, module)
            if layer is None:
                unsupported.append(f"{name} ({type(module).__name__})")
            else:
                self.layers.append(layer)
        if unsupported:
            raise ValueError(
                "privacy.grad_sample_mode=bookkeeping cannot clip these trainable layers: "
                f"{', '.join(unsupported)}; use privacy.grad_sample_mode=hooks"
            )
        own = [p for layer in self.layers for p in _trainable(layer.module)]
        if len({id(p) for p in own}) != len(own):
            raise ValueError(
                "privacy.grad_sample_mode=bookkeeping cannot clip a weight shared by two "
                "layers (tied embeddings): set model.tie_embeddings=false"
            )
        self.handles = [layer.module.register_forward_hook(layer.capture) for layer in self.layers]

    def output_grads(self, loss_per_sequence: torch.Tensor) -> list[torch.Tensor | None]:
        """Per-sequence loss gradients of every layer's output: the one backward pass."""
        outputs = [layer.output for layer in self.layers]
        return list(torch.autograd.grad(loss_per_sequence.sum(), outputs, allow_unused=True))

    def clip_factors(
        self, grads: list[torch.Tensor | None], units: Groups | None = None
    ) -> torch.Tensor:
        """min(1, C / ||grad_i||) for each sequence i (or each unit), as Opacus computes it."""
        grams: dict = {}  # the inputs' Gram matrices, each computed once
        pairs = zip(self.layers, grads, strict=True)
        squared = sum(layer.squared_norms(g, grams, units) for layer, g in pairs if g is not None)
        return (self.max_grad_norm / (squared.sqrt() + 1e-6)).clamp(max=1.0)

    def add_clipped(self, grads: list[torch.Tensor | None], scale: torch.Tensor) -> None:
        """`p.grad += sum_i scale_i grad_i` for every trainable weight; forgets the batch
        layer by layer, so activations and gradients give way to weight gradients."""
        for i, layer in enumerate(self.layers):
            if grads[i] is not None:
                layer.add_clipped(grads[i], scale)
            grads[i] = None
            layer.release()

    def backward(self, loss_per_sequence: torch.Tensor, units: Groups | None = None) -> None:
        """`p.grad` = the clipped sum over sequences (or units: a unit's blocks summed, then
        clipped as one; each block scaled by its unit's factor gives the same sum)."""
        grads = self.output_grads(loss_per_sequence)
        factors = self.clip_factors(grads, units)
        self.add_clipped(grads, factors if units is None else units.expand(factors))

    def cleanup(self) -> None:
        for handle in self.handles:
            handle.remove()
        for layer in self.layers:
            layer.release()
