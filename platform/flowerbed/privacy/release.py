"""What leaves the node besides its update, as the node's policy says, not the server.

Under DP-SGD the guarantee covers the update and nothing else: an exact loss on private
records, or an exact count of them, is what a membership-inference attack reads. So
`release: minimal` (a deployed node's default) lets a reply carry only what the server
needs to run the round: aggregation weight 1 (the server cannot check a count, and every
DP-SGD update is a mean over an expected batch already), the planned token count, the
lifetime ε rounded to 0.01 and the noise multiplier to 3 significant digits (both depend
on the node's record count through its sample rate, so they still say roughly how much
data it holds), and no loss at all; it holds whatever privacy mode the server names, so
a server cannot ask a node to drop DP and send its exact losses. The exact values go to
the node's own log. `release: exact` sends them exactly; under DP-SGD its replies, its
ledger and the run's records mark them as outside the guarantee. `release: auto` (a
simulated study's default) is minimal under DP-SGD and exact otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path

from flowerbed.config import NodePolicyConfig, PrivacyConfig
from flowerbed.protocol import EvaluateReply, TrainReply
from flowerbed.wire import reply_metrics

log = logging.getLogger("flowerbed")
NODE_LOG = "node_metrics.jsonl"


def exact_under_dp(policy: NodePolicyConfig, privacy: PrivacyConfig) -> bool:
    """Whether exact metrics leave a node that trains under DP-SGD (outside its guarantee)."""
    return privacy.mode == "dp_sgd" and policy.release == "exact"


def withholds(policy: NodePolicyConfig, privacy: PrivacyConfig) -> bool:
    """Whether the node keeps its exact losses and counts to itself."""
    if policy.release == "auto":
        return privacy.mode == "dp_sgd"
    return policy.release == "minimal"


def released_train(
    reply: TrainReply, policy: NodePolicyConfig, privacy: PrivacyConfig, planned_tokens: int
) -> TrainReply:
    """The train reply that leaves the node (its weights are added afterwards)."""
    heldout = reply.heldout and released_evaluate(reply.heldout, policy, privacy)
    if exact_under_dp(policy, privacy):
        return dataclasses.replace(reply, heldout=heldout, outside_guarantee=True)
    if not withholds(policy, privacy):
        return reply
    trained = reply.num_examples > 0
    return dataclasses.replace(
        reply,
        num_examples=int(trained),
        tokens=planned_tokens if trained else 0,
        train_loss=None,
        epsilon=None if reply.epsilon is None else round(reply.epsilon, 2),
        noise_multiplier=_significant(reply.noise_multiplier, 3),
        heldout=heldout,
    )


def released_evaluate(
    reply: EvaluateReply, policy: NodePolicyConfig, privacy: PrivacyConfig
) -> EvaluateReply:
    """The held-out losses that leave the node: exact, marked, or none (weight 1)."""
    if exact_under_dp(policy, privacy):
        return dataclasses.replace(reply, outside_guarantee=True)
    if not withholds(policy, privacy):
        return reply
    return EvaluateReply(partition_id=reply.partition_id, num_examples=1)


def log_exact(state_dir: Path, kind: str, round_: int, reply: TrainReply | EvaluateReply) -> None:
    """The node's own record of its exact metrics: one line in its state directory,
    readable by the node's owner only (0600)."""
    line = {"time": time.time(), "kind": kind, "round": round_, **reply_metrics(reply, "")}
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / NODE_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as file:
        file.write(json.dumps(line) + "\n")


def _significant(value: float | None, digits: int) -> float | None:
    return None if value is None else float(f"{value:.{digits}g}")
