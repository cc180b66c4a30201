"""DP-SGD on several ranks of one node: the node's noise is drawn once, not once a rank.

Each rank clips the per-unit gradients of its share of the node's Poisson draw and sums
them. Before any noise, those sums are summed over the ranks, so every rank holds the
node's whole clipped sum; every rank then draws the same noise (one seed, the node's
secret, for all its ranks) and takes the same step. The node's gradient carries one
Gaussian draw of standard deviation `noise_multiplier * max_grad_norm`, exactly what
the ledger accounts for; a draw per rank would have cost nothing in privacy and added
noise for nothing, a draw on one rank only would have needed a second collective.
"""

from __future__ import annotations

from flowerbed.model.ranks import Ranks


def noised_once(optimizer_class: type, ranks: Ranks) -> type:
    """`optimizer_class` (an Opacus DP optimizer) whose clipped sums meet over `ranks`
    before its noise; the class itself for one rank."""
    if ranks.world == 1:
        return optimizer_class

    class AcrossRanks(optimizer_class):
        def add_noise(self) -> None:
            ranks.reduce_sum([p.summed_grad for p in self.params])
            super().add_noise()

    return AcrossRanks
