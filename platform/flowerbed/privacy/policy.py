"""The node has the last word on its privacy: the server's instructions against its policy.

The server proposes privacy settings with every Message; before it trains (or reports
anything) a client compares them with its own policy and refuses whatever is weaker, or
whatever it does not understand, in one sentence naming its setting and the server's.
Its ledger then enforces the node's ε cap even when the server's budget is higher or
absent.
"""

from __future__ import annotations

from flowerbed.config import PrivacyConfig
from flowerbed.config.node_policy import NodePolicyConfig
from flowerbed.privacy.modes import MODES
from flowerbed.privacy.units import STRENGTH

MIN_NOISE_MULTIPLIER = 0.1
"""Below it no ε means anything (30 steps at rate 0.02 spend ε 287 at 0.1) and the PRV
accountant needs gigabytes (1.8 GB at 0.05, more than a node has at 0.001)."""


def refusal(
    policy: NodePolicyConfig,
    privacy: PrivacyConfig,
    partition_id: int,
    deployed: bool,
    masked: bool | None = None,
) -> str | None:
    """Why client `partition_id` refuses the server's `privacy` (None: it accepts).

    `masked`: whether the update the server asks for leaves under secure aggregation
    (None: no update is asked for, as in an evaluate Message)."""
    refuses = f"client {partition_id} refuses the server's privacy settings: its policy"
    if masked is False and policy.require_secure_aggregation:
        return (
            f"{refuses} requires secure aggregation (require-secure-aggregation), but the "
            "server asked for the update in the clear (federation.secure_aggregation=off)"
        )
    if privacy.mode not in MODES:
        return f"{refuses} does not know privacy.mode={privacy.mode!r}, which the server asked for"
    if privacy.mode != "dp_sgd":
        if policy.requires_dp:
            return (
                f"{refuses} requires DP-SGD at the node (require-dp, or a demand that needs "
                f"it), but the server asked for privacy={privacy.mode}"
            )
        return None
    if privacy.unit not in STRENGTH:
        return (
            f"{refuses} protects a sequence, a document or a user, but the server asked for "
            f"privacy.unit={privacy.unit!r}, which it must resolve to one of them first"
        )
    if deployed and privacy.noise_seed == "run":
        return (
            f"{refuses} keeps its noise secret, but the server asked for "
            "privacy.noise_seed=run, which lets anyone who knows the run's seed recompute it"
        )
    if privacy.delta > policy.delta_cap:
        return (
            f"{refuses} accepts δ ≤ {policy.delta_cap:g} (max-delta), but the server asked "
            f"for privacy.delta={privacy.delta:g}"
        )
    sigma = privacy.noise_multiplier
    if sigma is not None and sigma < MIN_NOISE_MULTIPLIER:
        return (
            f"{refuses} adds noise of at least {MIN_NOISE_MULTIPLIER:g} times the clipping "
            f"norm, but the server asked for privacy.noise_multiplier={sigma:g}, which "
            "protects nothing (and its ε cannot be computed in bounded memory)"
        )
    asked = privacy.budget
    if policy.max_epsilon is not None and asked is not None and asked > policy.max_epsilon:
        which = "target_epsilon" if privacy.target_epsilon is not None else "max_epsilon"
        return (
            f"{refuses} accepts ε ≤ {policy.max_epsilon:g} over the node's life "
            f"(max-epsilon), but the server asked for privacy.{which}={asked:g}"
        )
    if policy.unit is not None and STRENGTH[privacy.unit] < STRENGTH[policy.unit]:
        return (
            f"{refuses} protects each {policy.unit} (privacy-unit), but the server asked for "
            f"privacy.unit={privacy.unit}, which protects less"
        )
    if policy.accountant is not None and privacy.accountant != policy.accountant:
        return (
            f"{refuses} counts with the {policy.accountant} accountant (accountant), but the "
            f"server asked for privacy.accountant={privacy.accountant}"
        )
    return None


def delta_refusal(privacy: PrivacyConfig, partition_id: int, units: int) -> str | None:
    """Why a DP-SGD round over `units` units refuses the server's δ (None: it does not):
    δ ≥ 1/units would let the guarantee hold while one unit is released whole."""
    if privacy.mode != "dp_sgd" or privacy.delta * units < 1:
        return None
    return (
        f"client {partition_id} refuses the server's privacy settings: privacy.delta="
        f"{privacy.delta:g} is not below 1/{units} (its units this round), so the guarantee "
        "would allow releasing one of them whole"
    )


def node_budget(policy: NodePolicyConfig, privacy: PrivacyConfig) -> float | None:
    """The ε the client may spend in its life: the tighter of the server's and the node's."""
    caps = [c for c in (privacy.budget, policy.max_epsilon) if c is not None]
    return min(caps) if caps else None
