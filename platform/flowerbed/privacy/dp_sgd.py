"""Opacus DP-SGD for Hugging Face causal LMs, one logical step at a time.

The privacy unit is one sequence (block), or with `groups` a document or a person (every
block of a sampled unit, up to `privacy.max_blocks_per_unit`). Every step:
- draws a Poisson sample of the client's units at rate q (the rate the ledger records),
- computes a per-sequence loss (mean over its own tokens), so each unit's gradient (the
  sum of its blocks') is clipped to `max_grad_norm` (book-keeping in one backward pass
  by default; per-sample hooks for any layer Opacus knows; Opacus's ghost clipping for
  sequences only),
- adds Gaussian noise once per logical batch, however many physical chunks it took, from
  the release's secret key (`secret_noise.py`) or, for repeatable runs, a run seed;
  under `privacy.mechanism=banded` that draw becomes correlated noise (`correlated_noise.py`),
- takes a noise-only step when the Poisson draw is empty (HF attention cannot run on an
  empty batch, and skipping would make the step count depend on the data),
- on several ranks of one node, sums the ranks' clipped sums before the noise, which is
  drawn once for the node (`across_ranks.py`).

Hooks attach to the plain model (Opacus's `wrap_model=False`), so the weights a client
sends are the model's own state dict, and `close()` removes them again.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from flowerbed.model.ranks import Ranks
from flowerbed.model.runtime import autocast
from flowerbed.privacy.across_ranks import noised_once
from flowerbed.privacy.correlated_noise import CorrelatedNoise
from flowerbed.privacy.secret_noise import NoiseKey
from flowerbed.privacy.units import Groups, chunks


def per_sequence_loss(
    logits: torch.Tensor, ids: torch.Tensor, padded: bool = False
) -> torch.Tensor:
    """Next-token cross-entropy averaged within each sequence: shape [batch].

    The last position has no target (ignored), so the logits are never sliced and copied.
    `padded`: blocks packed by document end in padding (id < 0), which is no target either.
    """
    targets = F.pad(ids[:, 1:], (0, 1), value=-100)
    if padded:
        targets = targets.masked_fill(targets < 0, -100)
    losses = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
    if not padded:
        return losses.view(ids.shape)[:, :-1].mean(dim=1)
    counts = (targets != -100).sum(dim=1).clamp(min=1)
    return losses.view(ids.shape).sum(dim=1) / counts


# Token ids never require gradients, so Opacus's full backward hooks always say so: benign.
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients")


class _OpacusClipping:
    """A clipping mode Opacus implements: its hooks and its optimizer, by mode name."""

    mode: str

    def hook_settings(self, max_grad_norm: float) -> dict:
        return {}

    def attach(self, model: torch.nn.Module, max_grad_norm: float):
        from opacus.grad_sample.utils import prepare_module

        return prepare_module(
            model,
            grad_sample_mode=self.mode,
            wrap_model=False,
            batch_first=True,
            loss_reduction="mean",
            **self.hook_settings(max_grad_norm),
        )

    def optimizer_class(self) -> type:
        from opacus.optimizers import get_optimizer_class

        return get_optimizer_class(clipping="flat", distributed=False, grad_sample_mode=self.mode)


class _GhostClipping(_OpacusClipping):
    """`ghost`: per-sequence norms without per-sample gradients (two backward passes)."""

    mode = "ghost"

    def hook_settings(self, max_grad_norm: float) -> dict:
        return {"max_grad_norm": max_grad_norm}

    def backward(self, hooks, optimizer, loss_per_sequence: torch.Tensor, units) -> None:
        from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

        if units is not None:  # the config refuses it first; this guards direct callers
            raise ValueError(
                "privacy.grad_sample_mode=ghost clips sequences only: use bookkeeping or "
                "hooks for privacy.unit=document or user"
            )
        DPTensorFastGradientClipping(hooks, optimizer, loss_per_sequence, "mean").backward()

    def clear_for_noise(self, p: torch.nn.Parameter) -> None:
        p.grad = torch.zeros_like(p)


class _PerSampleHooks(_OpacusClipping):
    """`hooks`: explicit per-sample gradients, clipped one by one (any layer Opacus knows)."""

    mode = "hooks"

    def backward(self, hooks, optimizer, loss_per_sequence: torch.Tensor, units) -> None:
        loss_per_sequence.mean().backward()
        if units is not None:  # a unit's gradient is the sum of its blocks': clipped as one
            for p in optimizer.params:
                if getattr(p, "grad_sample", None) is not None:
                    p.grad_sample = units.sum(p.grad_sample)

    def clear_for_noise(self, p: torch.nn.Parameter) -> None:
        p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)


class _Bookkeeping(_GhostClipping):
    """`bookkeeping`: norms and the clipped sum from one backward pass (`bookkeeping.py`);
    it leaves `p.grad` as ghost clipping does, so the noise step is the same."""

    def attach(self, model: torch.nn.Module, max_grad_norm: float):
        from flowerbed.privacy.bookkeeping import Bookkeeping

        return Bookkeeping(model, max_grad_norm)

    def optimizer_class(self) -> type:
        from flowerbed.privacy.fused_noise import FusedNoiseOptimizer

        return FusedNoiseOptimizer

    def backward(self, hooks, optimizer, loss_per_sequence: torch.Tensor, units) -> None:
        hooks.backward(loss_per_sequence, units)


CLIPPING = {"ghost": _GhostClipping, "hooks": _PerSampleHooks, "bookkeeping": _Bookkeeping}


class PrivateStep:
    """DP-SGD around a model and its optimizer, one logical step per call (Opacus 1.6, flat
    clipping); `close()` takes the hooks off after the round."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: float,
        mode: str,
        max_physical_batch: int,
        noise: NoiseKey | None = None,
        padded: bool = False,
        ranks: Ranks | None = None,
        correlated: CorrelatedNoise | None = None,
    ) -> None:
        self.clipping = CLIPPING[mode]()  # the one place a grad_sample_mode is looked up
        self.model, self.max_physical_batch = model, max_physical_batch
        self.padded = padded
        """Blocks packed by document: their padding (id < 0) is neither input nor target."""
        self.hooks = self.clipping.attach(model, max_grad_norm)
        noise = noise or NoiseKey()  # neither key nor seed: torch's global generator
        keyed = noise.optimizer_class(self.clipping.optimizer_class())
        self.optimizer = noised_once(keyed, ranks or Ranks())(
            optimizer,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size,
            loss_reduction="mean",
            generator=noise.generator(next(model.parameters()).device),
        )
        if correlated is not None:  # privacy.mechanism=banded: the draw is shaped (C⁻¹z)
            if noise.key is None and not hasattr(self.optimizer, "correlated"):
                raise ValueError(
                    "privacy.mechanism=banded shapes one flat draw: use "
                    "privacy.grad_sample_mode=bookkeeping or privacy.noise_seed=secret"
                )
            self.optimizer.correlated = correlated

    def step(self, batch: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """One logical DP step on `batch` (a Poisson sample, possibly empty).

        Args:
            batch: [rows, seq_len] token ids.
            groups: unit-level DP: the sampled unit of each row (rows of a unit adjacent,
                ids from 0); each unit's gradient is clipped as one. None: every row is
                its own unit (sequence-level).

        Returns:
            The summed per-sequence loss of the batch (a device tensor; no host sync).
        """
        if batch.shape[0] == 0:
            self._noise_only_step()
            return torch.zeros((), device=batch.device)
        total = torch.zeros((), device=batch.device)
        pieces = self._physical(batch, groups)
        for i, (ids, units) in enumerate(pieces):
            self.optimizer.signal_skip_step(do_skip=i < len(pieces) - 1)
            positions = torch.arange(ids.shape[1], device=ids.device).repeat(ids.shape[0], 1)
            inputs = ids.clamp(min=0) if self.padded else ids
            with autocast(ids.device):
                logits = self.model(input_ids=inputs, position_ids=positions).logits
            loss = per_sequence_loss(logits, ids, self.padded)
            self.clipping.backward(self.hooks, self.optimizer, loss, units)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            total += loss.detach().sum()
        return total

    def _physical(
        self, batch: torch.Tensor, groups: torch.Tensor | None
    ) -> list[tuple[torch.Tensor, Groups | None]]:
        """The chunks one logical step runs as, at most `max_physical_batch` rows each; a
        unit is never split (its blocks' gradients must meet in one backward pass)."""
        if groups is None:
            size = self.max_physical_batch or batch.shape[0]
            return [(ids, None) for ids in batch.split(size)]
        return [
            (batch[rows], Groups(groups[rows] - groups[rows][0]))
            for rows in chunks(groups, self.max_physical_batch)
        ]

    def _noise_only_step(self) -> None:
        """An empty Poisson draw: clip nothing, add the noise, step (Opacus counts it)."""
        self.optimizer.signal_skip_step(do_skip=False)
        for p in self.optimizer.params:
            self.clipping.clear_for_noise(p)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def close(self) -> None:
        """Remove the clipping hooks and per-sample state from the model."""
        self.hooks.cleanup()
