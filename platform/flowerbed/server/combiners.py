"""How the admitted updates become one: the combine stage, one class per rule.

Every combiner reads the admitted replies' tensors in place, works in fp32 on the CPU, one
parameter at a time (the robust ones stack that parameter's n copies, never the whole
model's), and returns the combined weights; the outer step (`server/outer.py`) takes it
from there. `COMBINERS` is the registry `combiner.name` is looked up in, once; adding a
rule is a class here and a file in `conf/combiner/`.

- `mean`: the weighted mean (FedAvg), accumulated in partition order;
- `trimmed_mean`: per coordinate, the mean after cutting `trim_fraction` at each end;
- `median`: per coordinate (the mean of the two middle values for an even count);
- `krum`: the update with the smallest sum of squared distances to its n - f - 2 nearest
  others; `multikrum`: the equal-weight mean of the `selected` (n - f) best-scored ones;
- `clipped_noised_mean` (privacy=user_level, not a choice of its own): each update clipped
  to `privacy.max_grad_norm`, the equal-weight mean of the n admitted, Gaussian noise of
  std sigma*C/n, and one release composed by Flower's RDP accountant.

Under sample-level DP every rule is post-processing of the clients' private updates.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import torch

from flowerbed.config import FlowerbedConfig
from flowerbed.config.robustness import CombinerConfig
from flowerbed.privacy.secret_noise import KeyedGaussian
from flowerbed.server.admission import ClientUpdate, Weights, update_norm


class Combiner:
    """`mean`: the admitted updates' mean, weighted by their admitted examples."""

    name: ClassVar[str] = "mean"

    def __init__(self, cfg: CombinerConfig) -> None:
        self.cfg = cfg

    def budget_spent(self) -> bool:
        """Whether one more release would pass the combiner's own privacy budget (none)."""
        return False

    def spent(self) -> float | None:
        """The ε the combiner's releases have spent (None: it releases nothing private)."""
        return None

    def combine(self, updates: list[ClientUpdate], current: Weights, round_: int) -> Weights:
        weights = torch.tensor([u.weight for u in updates], dtype=torch.float64)
        weights = (weights / weights.sum()).tolist()
        average: Weights = {}
        for weight, update in zip(weights, updates, strict=True):
            for name, tensor in update.tensors.items():
                if name not in average:
                    average[name] = torch.zeros(tensor.shape, dtype=torch.float32)
                average[name].add_(tensor, alpha=weight)
        return average


class _Coordinatewise(Combiner):
    """A rule applied to each coordinate of the n updates, one parameter at a time."""

    def combine(self, updates: list[ClientUpdate], current: Weights, round_: int) -> Weights:
        return {
            name: self.reduce(torch.stack([u.tensors[name].float() for u in updates]))
            for name in updates[0].tensors
        }

    def reduce(self, stacked: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class TrimmedMean(_Coordinatewise):
    name = "trimmed_mean"

    def reduce(self, stacked: torch.Tensor) -> torch.Tensor:
        cut = int(self.cfg.trim_fraction * len(stacked))
        ordered = stacked.sort(dim=0).values
        return ordered[cut : len(stacked) - cut].mean(dim=0)


class Median(_Coordinatewise):
    name = "median"

    def reduce(self, stacked: torch.Tensor) -> torch.Tensor:
        n, ordered = len(stacked), stacked.sort(dim=0).values
        if n % 2:
            return ordered[n // 2]
        return (ordered[n // 2 - 1] + ordered[n // 2]) / 2


class Krum(Combiner):
    """`krum`: the one update its neighbours vouch for best (Blanchard et al. 2017)."""

    name = "krum"

    def scores(self, updates: list[ClientUpdate]) -> torch.Tensor:
        """Each update's sum of squared distances to its n - f - 2 nearest others."""
        n = len(updates)
        distances = torch.zeros(n, n, dtype=torch.float64)
        for name in updates[0].tensors:
            flat = torch.stack([u.tensors[name].float().reshape(-1) for u in updates])
            distances += torch.cdist(flat.double(), flat.double()).pow(2)
        nearest = max(n - self.cfg.faulty_clients - 2, 1)
        others = distances + torch.diag(torch.full((n,), math.inf, dtype=torch.float64))
        return others.sort(dim=1).values[:, :nearest].sum(dim=1)

    def chosen(self, updates: list[ClientUpdate]) -> list[ClientUpdate]:
        best = int(torch.argmin(self.scores(updates)))
        return [updates[best]]

    def combine(self, updates: list[ClientUpdate], current: Weights, round_: int) -> Weights:
        return Combiner.combine(self, self.chosen(updates), current, round_)


class MultiKrum(Krum):
    """`multikrum`: the equal-weight mean of the best-scored updates. Krum's scores look
    at the updates, never at the weights claimed: a weighted mean would let one selected
    hostile update claiming a huge weight be the whole step."""

    name = "multikrum"

    def chosen(self, updates: list[ClientUpdate]) -> list[ClientUpdate]:
        keep = self.cfg.selected or max(len(updates) - self.cfg.faulty_clients, 1)
        order = torch.argsort(self.scores(updates), stable=True)[:keep]
        return [updates[i] for i in sorted(order.tolist())]

    def combine(self, updates: list[ClientUpdate], current: Weights, round_: int) -> Weights:
        equal = [dataclasses.replace(u, weight=1.0) for u in self.chosen(updates)]
        return Combiner.combine(self, equal, current, round_)


class ClippedNoisedMean(Combiner):
    """User-level (client-level) DP at the server: clip, average, noise, account."""

    name = "clipped_noised_mean"

    def __init__(self, cfg: CombinerConfig, run: FlowerbedConfig) -> None:
        super().__init__(cfg)
        from flwr.serverapp import NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod

        privacy, fed = run.privacy, run.federation
        self.clip, self.sigma = privacy.max_grad_norm, privacy.noise_multiplier
        self.sampled, self.population = run.clients_per_round, fed.num_clients
        self.seed = run.seed if privacy.noise_seed == "run" else None
        self.accountant = RdpAccountant(
            PrivacyConfig(
                target_delta=privacy.delta,
                population_size=fed.num_clients,
                neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                sampling_method=SamplingMethod.NO_AMPLIFICATION,
                max_epsilon=privacy.max_epsilon,
            )
        )

    def noise(self, round_: int) -> Callable[[torch.Size, float], torch.Tensor]:
        """The round's Gaussian noise, by shape and std: from a fresh 256-bit key that
        never leaves this process (`privacy/secret_noise.py`), or with
        `privacy.noise_seed=run` from the run's seed (repeatable, NOT private)."""
        if self.seed is None:
            gaussian = KeyedGaussian(os.urandom(32))
            return lambda shape, std: gaussian.fill_(torch.empty(shape), std)
        seed = int(np.random.SeedSequence([self.seed, round_]).generate_state(1)[0])
        generator = torch.Generator().manual_seed(seed)
        return lambda shape, std: torch.randn(shape, generator=generator) * std

    def release(self):
        """The Gaussian release of one round, as Flower's accountant counts it."""
        from flwr.serverapp import GaussianPrivacyEvent

        return GaussianPrivacyEvent(self.sigma, self.sampled, self.population)

    def budget_spent(self) -> bool:
        """Whether one more release would pass `privacy.max_epsilon`."""
        capped = self.accountant.config.max_epsilon is not None
        return capped and self.accountant.would_exceed(self.release())

    def spent(self) -> float | None:
        so_far = self.accountant.get_privacy_spent()
        return float(so_far.epsilon) if so_far.num_releases else None

    def combine(self, updates: list[ClientUpdate], current: Weights, round_: int) -> Weights:
        total: Weights = {name: torch.zeros_like(current[name]) for name in updates[0].tensors}
        for update in updates:
            scale = min(1.0, self.clip / max(update_norm(update.tensors, current), 1e-12))
            for name, tensor in update.tensors.items():
                total[name].add_(tensor.float() - current[name], alpha=scale)
        # The noise is sized by the updates averaged, not the clients sampled: with fewer
        # (dropouts, refusals, rejections) each weighs more, and σ must hold for it.
        std = self.sigma * self.clip / len(updates)
        noise = self.noise(round_)
        mean: Weights = {}
        for name, summed in total.items():
            mean[name] = current[name] + summed / len(updates) + noise(summed.shape, std)
        self.accountant.compose(self.release())
        return mean


COMBINERS: dict[str, type[Combiner]] = {
    c.name: c for c in (Combiner, TrimmedMean, Median, Krum, MultiKrum)
}


def combiner_for(cfg: FlowerbedConfig) -> Combiner:
    """The combine stage the run's config names: the one place it is looked up."""
    if cfg.privacy.mode == "user_level":
        return ClippedNoisedMean(cfg.combiner, cfg)
    return COMBINERS[cfg.combiner.name](cfg.combiner)
