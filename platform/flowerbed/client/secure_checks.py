"""What a node checks of a SecAgg+ round before it sends anything the round could misuse.

The coordinator chooses the sample, the neighbours, the threshold and who dropped out; a
coordinator that chooses them badly can rebuild a node's self mask and read its update
(a round of one node with threshold 1, say). Each check below is a fact of the round the
node sees for itself; a violation is a refusal, one sentence naming what was wrong, and
the node sends nothing more of that round.

Who dropped out is the coordinator's word, and it can tell each node a different story:
that a neighbour is active to some (they reveal its self-mask seed) and dropped out to
others (they reveal its mask key). So a node masks with every neighbour (it refuses a
collect stage without every neighbour's shares), and reveals shares only once at least
`threshold` nodes, itself included, have confirmed the very survivor list it holds
(`confirmation_problem`). A node confirms one list a round; two lists confirmed by
`threshold` each would need more than all of its neighbours, so every share that leaves
any node follows one list, and the coordinator can unmask only that list's sum.

What it cannot see: whether its neighbours are other institutions at all (a coordinator
that registers nodes of its own, or answers for them, stands in the sum as its own
clients and can confirm any list as them). docs/secure-aggregation.md says what that
leaves.
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
    if n != setup.sample:
        return (
            f"the coordinator announced {n} neighbours among {setup.sample} clients sampled: "
            "every client of a round must be every other's neighbour, or they cannot confirm "
            "to each other who dropped out"
        )
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


def senders_problem(node_id: int, neighbours: set[int], senders: list[int]) -> str | None:
    """Why the shares forwarded in the collect stage are wrong (None: they are not). The
    node masks with every neighbour or not at all: masking with the few whose shares the
    coordinator chose to forward leaves masks it could remove by telling the holders of
    those few's keys that they dropped out."""
    others = neighbours - {node_id}
    if len(set(senders)) != len(senders) or not set(senders) <= others:
        return "the coordinator forwarded shares from nodes outside its neighbours, or twice"
    if set(senders) != others:
        return (
            f"the coordinator forwarded the shares of {len(senders)} of its {len(others)} other "
            "neighbours, and a node masks with all of them (one that dropped out in the key "
            "exchange calls for a new set-up)"
        )
    return None


def survivors_problem(
    node_id: int, neighbours: set[int], active: list[int], dead: list[int], threshold: int
) -> str | None:
    """Why the survivor list of the consistency check is wrong (None: it is not): it must
    split the node's neighbours into active and dropped out, itself active, at least
    `threshold` active."""
    if set(active) & set(dead):
        return (
            f"the coordinator lists node(s) {sorted(set(active) & set(dead))} as both active "
            "and dropped out, which would reveal both of their secrets"
        )
    if len(set(active)) != len(active) or len(set(dead)) != len(dead):
        return "the coordinator lists a node twice"
    if set(active) | set(dead) != neighbours:
        return (
            "the coordinator's active and dropped-out lists are not exactly its neighbours "
            "(every one of them sent it shares)"
        )
    if node_id not in active:
        return "the coordinator lists this node as dropped out although it sent its update"
    if len(active) < threshold:
        return (
            f"only {len(active)} of its neighbours are active, fewer than the threshold {threshold}"
        )
    return None


def confirmation_problem(confirmed: int, threshold: int) -> str | None:
    """Why the node must not reveal shares (None: it may): fewer than `threshold` nodes,
    itself included, confirmed the survivor list it holds."""
    if confirmed + 1 < threshold:
        return (
            f"only {confirmed} of its neighbours confirmed the survivor list it was told, "
            f"fewer than the {threshold - 1} the threshold {threshold} needs besides itself: "
            "the coordinator told them another story, or too many dropped out"
        )
    return None
