"""The node's four SecAgg+ stages, each from the state and the stage's config to its reply.

Set-up makes two key pairs; the key exchange makes a 256-bit self-mask seed and sends
Shamir shares of it and of the first private key, each encrypted for one neighbour;
collect keeps the shares it receives (the mask itself is `client/secure_masking.py`);
unmask returns the shares the coordinator needs. Each checks the round first
(`client/secure_checks.py`) and raises `Refusal` with the reason.
"""

from __future__ import annotations

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
    neighbour_problem,
    senders_problem,
    setup_problem,
    unmask_problem,
)
from flowerbed.client.secure_state import SecAggState
from flowerbed.config.node_policy import NodePolicyConfig
from flowerbed.secagg.contract import Key, RoundSetup, Stage
from flowerbed.secagg.masks import SEED_BYTES


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
    """Keep the neighbours' shares forwarded in the collect stage, checked first."""
    setup = cast(RoundSetup, state.setup)
    sources = cast(list[int], config[Key.SOURCES])
    ciphertexts = cast(list[bytes], config[Key.CIPHERTEXTS])
    problem = senders_problem(state.node_id, set(state.neighbours), sources, setup.threshold)
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


def unmask(state: SecAggState, config: ConfigRecord) -> dict[str, Any]:
    """The shares of the active neighbours' self-mask seeds and of the dead ones' keys."""
    setup = cast(RoundSetup, state.setup)
    active = cast(list[int], config[Key.ACTIVE])
    dead = cast(list[int], config[Key.DEAD])
    problem = unmask_problem(state.node_id, set(state.seed_shares), active, dead, setup.threshold)
    if problem:
        raise Refusal(problem)
    shares = [state.seed_shares[n] for n in active] + [state.key_shares[n] for n in dead]
    return {Key.NODE_IDS: active + dead, Key.SHARES: shares}


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
