"""The arithmetic of a SecAgg+ round on the server, with Flower's own primitives: add the
masked vectors, route the encrypted shares, rebuild secrets and remove every mask.

Everything here works modulo `MOD_RANGE` on quantized integers; only `weighted_mean`
returns floats, and only for the sum of the survivors' updates.
"""

from __future__ import annotations

from typing import cast

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_extract,
    parameters_addition,
    parameters_mod,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.quantization import dequantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

from flowerbed.server.replies import FederationError

MOD_RANGE = 2**32
"""Masked vectors are summed modulo this; with 2^22 quantization levels, up to 1,024
clients fit."""


class SecureAggregationFailed(FederationError):
    """Too few clients remained for the round's masks to be removed; says how many."""


def masked_sum(replies: list[Message]) -> tuple[list[np.ndarray], int]:
    """The sum of the masked vectors in the collect stage's train replies and the largest
    one's bytes (SecAgg+ sends 64-bit integers, whatever the transport dtype). Each
    vector is dropped from its reply once added: at 125M parameters each is a gigabyte,
    and the replies are kept for their metrics."""
    total, largest = None, 0
    for reply in replies:
        if reply.has_error() or reply.metadata.message_type != MessageType.TRAIN:
            continue
        config = reply.content.config_records[RECORD_KEY_CONFIGS]
        chunks = cast(list[bytes], config[Key.MASKED_PARAMETERS])
        largest = max(largest, sum(len(b) for b in chunks))
        vector = [bytes_to_ndarray(b) for b in chunks]
        config[Key.MASKED_PARAMETERS] = []
        total = vector if total is None else parameters_addition(total, vector)
    if total is None:
        raise SecureAggregationFailed("secure aggregation: no masked update came back")
    return parameters_mod(total, MOD_RANGE), largest


def forward_shares(replies: dict[int, ConfigRecord]) -> dict[int, tuple[list[bytes], list[int]]]:
    """Each node's incoming encrypted shares and their sources (the server cannot read
    them: each is encrypted for its destination)."""
    forwarded: dict[int, tuple[list[bytes], list[int]]] = {n: ([], []) for n in replies}
    for source, config in replies.items():
        destinations = cast(list[int], config[Key.DESTINATION_LIST])
        ciphertexts = cast(list[bytes], config[Key.CIPHERTEXT_LIST])
        for destination, ciphertext in zip(destinations, ciphertexts, strict=True):
            if destination in forwarded:
                forwarded[destination][0].append(ciphertext)
                forwarded[destination][1].append(source)
    return forwarded


def shares_by_owner(replies: dict[int, ConfigRecord], nodes: set[int]) -> dict[int, list[bytes]]:
    """The unmask stage's shares, grouped by the node whose secret they rebuild."""
    shares: dict[int, list[bytes]] = {node: [] for node in nodes}
    for config in replies.values():
        owners = cast(list[int], config[Key.NODE_ID_LIST])
        for owner, share in zip(owners, cast(list[bytes], config[Key.SHARE_LIST]), strict=True):
            shares[owner].append(share)
    return shares


def remove_masks(
    masked: list[np.ndarray],
    shares: dict[int, list[bytes]],
    ring: dict[int, set[int]],
    keys: dict[int, list[bytes]],
    present: tuple[set[int], set[int]],
    threshold: int,
) -> list[np.ndarray]:
    """The quantized sum once every mask is gone.

    `present`: the nodes that shared their secrets (only they masked anything) and the
    survivors among them (their vectors are in the sum): a survivor's private mask is
    removed, and a dropped node's pairwise masks with its neighbours.
    """
    shared, survivors = present
    shapes = [a.shape for a in masked]
    for owner in sorted(shared):
        owned = shares[owner]
        if len(owned) < threshold:
            raise SecureAggregationFailed(
                f"secure aggregation: {len(owned)} share(s) of node {owner}'s secret came "
                f"back, fewer than the threshold {threshold}; the round's sum cannot be "
                "unmasked (too many clients dropped out)"
            )
        secret = combine_shares(owned)
        if owner in survivors:
            masked = parameters_subtraction(masked, pseudo_rand_gen(secret, MOD_RANGE, shapes))
            continue
        for neighbour in (ring[owner] & shared) - {owner}:
            key = generate_shared_key(
                bytes_to_private_key(secret), bytes_to_public_key(keys[neighbour][0])
            )
            mask = pseudo_rand_gen(key, MOD_RANGE, shapes)
            add = parameters_addition if owner > neighbour else parameters_subtraction
            masked = add(masked, mask)
    return parameters_mod(masked, MOD_RANGE)


def weighted_mean(
    quantized: list[np.ndarray], survivors: int, clipping_range: float, target_range: int
) -> list[np.ndarray] | None:
    """The survivors' weighted mean update from their quantized, weight-scaled sum (the
    mod puts the total weight in the vector's first entry); None if that weight is 0."""
    total_ratio, vector = factor_extract(quantized)
    if total_ratio == 0:
        return None
    mean = dequantize(vector, clipping_range, target_range)
    offset = -(survivors - 1) * clipping_range
    return [(v + offset) * (target_range / total_ratio) for v in mean]
