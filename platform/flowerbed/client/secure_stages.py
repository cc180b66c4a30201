"""The node's five SecAgg+ stages, each from the state and the stage's config to its reply.

Set-up makes two key pairs; the key exchange makes a 256-bit self-mask seed and sends
Shamir shares of it and of the first private key, each encrypted for one neighbour;
collect keeps the shares it receives (the mask itself is `client/secure_masking.py`);
the consistency check keeps the survivor list it is told and confirms it to each other
neighbour; unmask counts the neighbours that confirmed the same list and returns the
shares the coordinator needs. Each checks the round first (`client/secure_checks.py`)
and raises `Refusal` with the reason.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any, cast

from flwr.app import ConfigRecord
from flwr.common.secure_aggregation.crypto.shamir import create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    decrypt,
    encrypt,
    generate_shared_key,
)
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)

from flowerbed.client.secure_checks import (
    confirmation_problem,
    neighbour_problem,
    senders_problem,
    setup_problem,
    survivors_problem,
)
from flowerbed.client.secure_state import SecAggState
from flowerbed.config.node_policy import NodePolicyConfig
from flowerbed.secagg.contract import Key, RoundSetup, Stage
from flowerbed.secagg.masks import SEED_BYTES, mask_key

CONFIRMATION = b"flowerbed secagg+ survivor list confirmed v1"
"""The purpose label of the MAC key two neighbours derive from their channel key."""


class Refusal(Exception):
    """The round breaks a rule the node holds; the message says which."""


def set_up(
    node_id: int, config: ConfigRecord, policy: NodePolicyConfig
) -> tuple[SecAggState, dict[str, Any]]:
    """A new round's state and the reply: two fresh public keys."""
    setup = RoundSetup.from_config(config)
    problem = setup_problem(setup, policy)
    if problem:
        raise Refusal(problem)
    (sk1, pk1), (sk2, pk2) = generate_key_pairs(), generate_key_pairs()
    state = SecAggState(
        stage=Stage.SETUP,
        node_id=node_id,
        setup=setup,
        sk1=private_key_to_bytes(sk1),
        sk2=private_key_to_bytes(sk2),
        pk1=public_key_to_bytes(pk1),
        pk2=public_key_to_bytes(pk2),
    )
    return state, {Key.PUBLIC_KEY_1: state.pk1, Key.PUBLIC_KEY_2: state.pk2}


def share_keys(state: SecAggState, config: ConfigRecord) -> dict[str, Any]:
    """The shares of the node's secrets, each encrypted for the neighbour it is meant for."""
    setup = cast(RoundSetup, state.setup)
    ids = cast(list[int], config[Key.NODE_IDS])
    pk1s, pk2s = (cast(list[bytes], config[k]) for k in (Key.PUBLIC_KEYS_1, Key.PUBLIC_KEYS_2))
    received = dict(zip(ids, zip(pk1s, pk2s, strict=True), strict=True))
    problem = neighbour_problem(state.node_id, (state.pk1, state.pk2), setup, received)
    if problem or len(received) != len(ids):
        raise Refusal(problem or "the coordinator sent a neighbour twice")
    state.neighbours, state.mask_seed = received, os.urandom(SEED_BYTES)
    seed_shares = create_shares(state.mask_seed, setup.threshold, setup.neighbours)
    key_shares = create_shares(state.sk1, setup.threshold, setup.neighbours)
    destinations, ciphertexts = [], []
    for node, seed_share, key_share in zip(ids, seed_shares, key_shares, strict=True):
        if node == state.node_id:
            state.seed_shares[node], state.key_shares[node] = seed_share, key_share
            continue
        plaintext = _plaintext(state.node_id, node, seed_share, key_share)
        ciphertexts.append(encrypt(_channel(state, node), plaintext))
        destinations.append(node)
    return {Key.DESTINATIONS: destinations, Key.CIPHERTEXTS: ciphertexts}


def receive_shares(state: SecAggState, config: ConfigRecord) -> None:
    """Keep every other neighbour's shares forwarded in the collect stage, checked first."""
    sources = cast(list[int], config[Key.SOURCES])
    ciphertexts = cast(list[bytes], config[Key.CIPHERTEXTS])
    problem = senders_problem(state.node_id, set(state.neighbours), sources)
    if problem or len(sources) != len(ciphertexts):
        raise Refusal(problem or "the coordinator forwarded shares without their sources")
    for source, ciphertext in zip(sources, ciphertexts, strict=True):
        origin, destination, seed_share, key_share = _parse(
            decrypt(_channel(state, source), ciphertext)
        )
        if (origin, destination) != (source, state.node_id):
            raise Refusal(
                f"a share said to come from node {source} was not made by it for this node"
            )
        state.seed_shares[source], state.key_shares[source] = seed_share, key_share


def confirm(state: SecAggState, config: ConfigRecord) -> dict[str, Any]:
    """Keep the survivor list the coordinator sends, checked, and confirm it to each other
    neighbour (a node confirms one list a round: the stages come in order)."""
    setup = cast(RoundSetup, state.setup)
    active = cast(list[int], config[Key.ACTIVE])
    dead = cast(list[int], config[Key.DEAD])
    problem = survivors_problem(state.node_id, set(state.neighbours), active, dead, setup.threshold)
    if problem:
        raise Refusal(problem)
    state.active = sorted(active)
    others = [n for n in sorted(state.neighbours) if n != state.node_id]
    confirmations = [_confirmation(state, n, state.node_id, n) for n in others]
    return {Key.DESTINATIONS: others, Key.CONFIRMATIONS: confirmations}


def unmask(state: SecAggState, config: ConfigRecord) -> dict[str, Any]:
    """The shares of the active neighbours' self-mask seeds and of the dead ones' keys, by
    the list this node confirmed, once enough neighbours confirmed the same list. A
    confirmation of another list, or not made by its neighbour, does not count."""
    setup = cast(RoundSetup, state.setup)
    sources = cast(list[int], config[Key.SOURCES])
    tags = cast(list[bytes], config[Key.CONFIRMATIONS])
    confirmed = {
        source
        for source, tag in zip(sources, tags, strict=True)
        if source in state.active
        and source != state.node_id
        and hmac.compare_digest(tag, _confirmation(state, source, source, state.node_id))
    }
    problem = confirmation_problem(len(confirmed), setup.threshold)
    if problem:
        raise Refusal(problem)
    dead = [n for n in sorted(state.neighbours) if n not in state.active]
    shares = [state.seed_shares[n] for n in state.active] + [state.key_shares[n] for n in dead]
    return {Key.NODE_IDS: state.active + dead, Key.SHARES: shares}


def _confirmation(state: SecAggState, neighbour: int, source: int, destination: int) -> bytes:
    """`source`'s MAC, for `destination`, of the survivor list this node holds among its
    neighbours, under a key only this node and `neighbour` (the other of the two) derive."""
    key = mask_key(_channel(state, neighbour), CONFIRMATION)
    listed = [sorted(state.neighbours), state.active]
    view = b"|".join(b",".join(str(n).encode() for n in ids) for ids in listed)
    message = source.to_bytes(8, "little") + destination.to_bytes(8, "little") + view
    return hmac.new(key, message, hashlib.sha256).digest()


def _channel(state: SecAggState, neighbour: int) -> bytes:
    """The symmetric key this node shares with `neighbour` for the shares (ECDH, HKDF)."""
    public = bytes_to_public_key(state.neighbours[neighbour][1])
    return generate_shared_key(bytes_to_private_key(state.sk2), public)


def _plaintext(source: int, destination: int, seed_share: bytes, key_share: bytes) -> bytes:
    """Both shares with the ids of their maker and their receiver (checked on receipt)."""
    head = source.to_bytes(8, "little") + destination.to_bytes(8, "little")
    return head + len(seed_share).to_bytes(4, "little") + seed_share + key_share


def _parse(plaintext: bytes) -> tuple[int, int, bytes, bytes]:
    source, destination = (int.from_bytes(plaintext[i : i + 8], "little") for i in (0, 8))
    size = int.from_bytes(plaintext[16:20], "little")
    return source, destination, plaintext[20 : 20 + size], plaintext[20 + size :]
