"""What a node checks of a SecAgg+ round before it sends anything the round could misuse.

The coordinator chooses the sample, the neighbours, the threshold and who dropped out; a
coordinator that chooses them badly can rebuild a node's self mask and read its update
(a round of one node with threshold 1, say). Each check below is a fact of the round the
node sees for itself; a violation is a refusal, one sentence naming what was wrong, and
the node sends nothing more of that round. What it cannot see: whether its neighbours
are other institutions at all (a coordinator that registers nodes of its own, or
answers for them, stands in the sum as its own clients), and how many clients the rest
of the round really has beyond its neighbours (the announced sample is the coordinator's
word). docs/secure-aggregation.md says what that leaves.
"""

from __future__ import annotations

from flowerbed.config.node_policy import NodePolicyConfig
from flowerbed.secagg.contract import MODULUS_BITS, RoundSetup


def setup_problem(setup: RoundSetup, policy: NodePolicyConfig) -> str | None:
    """Why the announced parameters are unsafe or unworkable (None: they are fine)."""
    n, t = setup.neighbours, setup.threshold
    if setup.sample < policy.min_secure_clients:
        return (
            f"the coordinator sampled {setup.sample} client(s), fewer than the "
            f"{policy.min_secure_clients} its policy requires (min-secure-clients)"
        )
    if n < 3:
        return (
            f"it would share masks with {n - 1} other client(s), fewer than the 2 without "
            "which the sum gives its update away"
        )
    if n > setup.sample:
        return f"its {n} neighbours would be more than the {setup.sample} clients sampled"
    if not n < 2 * t:
        return (
            f"the threshold {t} is not above half of its {n} neighbours, so a coordinator "
            "telling neighbours different stories could rebuild both of its secrets"
        )
    if t > n:
        return f"the threshold {t} asks for more shares than its {n} neighbours hold"
    if not (0 < setup.bits < MODULUS_BITS and setup.clipping_range > 0 < setup.max_weight):
        return "the quantization set-up (bits, clipping range, max weight) is out of range"
    if setup.sample << setup.bits >= 1 << MODULUS_BITS:
        return f"a sum of {setup.sample} updates of {setup.bits} bits would overflow 32 bits"
    return None


def neighbour_problem(
    node_id: int, keys: tuple[bytes, bytes], setup: RoundSetup, received: dict[int, tuple]
) -> str | None:
    """Why the neighbour set received at the key exchange is wrong (None: it is not)."""
    if len(received) != setup.neighbours:
        return (
            f"the coordinator sent the keys of {len(received)} neighbour(s), not the "
            f"{setup.neighbours} the set-up announced"
        )
    if received.get(node_id) != keys:
        return "the neighbour set does not hold this node's own public keys as it sent them"
    sent = [k for pair in received.values() for k in pair]
    if len(set(sent)) != len(sent):
        return "two neighbours in the set share a public key"
    return None


def senders_problem(
    node_id: int, neighbours: set[int], senders: list[int], threshold: int
) -> str | None:
    """Why the shares forwarded in the collect stage are wrong (None: they are not)."""
    if len(set(senders)) != len(senders) or not set(senders) <= neighbours - {node_id}:
        return "the coordinator forwarded shares from nodes outside its neighbours, or twice"
    if len(senders) + 1 < threshold:
        return (
            f"only {len(senders)} neighbour(s) sent it shares, too few to reach the "
            f"threshold {threshold} with its own"
        )
    return None


def unmask_problem(
    node_id: int, holders: set[int], active: list[int], dead: list[int], threshold: int
) -> str | None:
    """Why the unmask request would reveal too much (None: it would not). `holders`: the
    nodes whose shares this node holds (itself and the neighbours that sent shares)."""
    if set(active) & set(dead):
        return (
            f"the coordinator lists node(s) {sorted(set(active) & set(dead))} as both active "
            "and dropped out, which would reveal both of their secrets"
        )
    if len(set(active)) != len(active) or len(set(dead)) != len(dead):
        return "the coordinator lists a node twice"
    if not set(active) | set(dead) <= holders:
        return "the coordinator asks for shares of nodes that are not its neighbours"
    if node_id not in active:
        return "the coordinator lists this node as dropped out although it sent its update"
    if len(active) < threshold:
        return (
            f"only {len(active)} of its neighbours are active, fewer than the threshold {threshold}"
        )
    return None
