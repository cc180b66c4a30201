"""How much one reply may count in a round: its aggregation weight and its update's length.

Each bound is a number, null (none) or `auto`, the default: derived from the round's own
replies, because what an honest reply looks like changes with the learning-rate schedule
and with the federation's shard sizes, which the server cannot know in advance. The
numbers behind the factors are measured in docs/robustness.md ("Safe defaults").

**Weight.** Under DP (DP-SGD at the clients, or user-level DP at the server) every admitted
reply weighs 1, whatever it claims: a DP-SGD reply carries no count unless its node
releases one, nobody can check a count, and user-level DP's accountant assumes equal
weights. Without DP, `auto` lets a claim count up to `examples_factor` times the largest
claim among the round's other replies. Honest shard sizes are heavy-tailed: a Dirichlet(0.3)
round can hold one client with 14x the round's median claim, and 4x the median would cap an
honest client in up to half the rounds such a federation samples; the largest claim stands
far above the next one only when a round samples one large client with tiny ones (4x: 1 to
6% of the rounds). One hostile client cannot raise the claim it is compared with above the
largest honest one, so it weighs at most 4 of the largest honest client. (Colluding liars
vouch for each other: DP's equal weights, and the robust combiners, which ignore weights,
are the answer to them.)

**Norm.** `auto` lets an update be `update_norm_factor` times the lower median of the
round's update norms. The clients of a round train the same steps at the same learning
rate from the same weights with AdamW, which moves a coordinate by at most the learning
rate a step whatever the gradient's scale: the largest honest norm of a round measured at
most 1.27x the smallest, and they differ in principle by how consistently a client's steps
point one way, at most about sqrt(local_steps) (2.2 for the default 5 steps, 10 for 100).
With f hostile replies among n, f < n/2, the lower median lies between two honest norms:
hostile replies can neither raise the bound nor pull it below the smallest honest norm.
With two replies it is the smaller one: each is held to the factor times the other (a
client sending a tiny update can get the other one's left out; no rule can tell which of
two is honest). Under secure aggregation no single norm is visible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flowerbed.config import FederationConfig


def lower_median(values: Sequence[float]) -> float:
    """The middle value, the lower of the two middle ones for an even count."""
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


def weights(cfg: FederationConfig, equal: bool, claims: Sequence[float]) -> list[float]:
    """What each reply of the round weighs, from the weights the replies claim."""
    cap = cfg.max_examples_per_client
    if equal:
        return [1.0] * len(claims)
    if cap is None:
        return list(claims)
    if cap != "auto":
        return [min(claim, cap) for claim in claims]
    top = sorted(claims, reverse=True)[:2]
    if len(top) < 2:  # nobody to compare with
        return list(claims)
    return [
        min(claim, cfg.examples_factor * (top[1] if claim == top[0] else top[0]))
        for claim in claims
    ]


@dataclass(frozen=True)
class NormBound:
    """How long a reply's update may be in a round (`limit` None: any length)."""

    limit: float | None
    rule: str
    """How the limit came about, for the sentence of a reply it leaves out."""

    @classmethod
    def of(cls, cfg: FederationConfig, norms: Sequence[float]) -> NormBound:
        """The bound of a round whose updates are `norms` long (none measured: no bound
        from the round, as under secure aggregation)."""
        given, factor = cfg.max_update_norm, cfg.update_norm_factor
        if given is None or (given == "auto" and not norms):
            return cls(None, "")
        if given != "auto":
            return cls(given, f"federation.max_update_norm={given:g}")
        median = lower_median(norms)
        rule = (
            f"federation.max_update_norm=auto ({factor:g} x the round's median update "
            f"norm {median:.4g})"
        )
        return cls(factor * median, rule)
