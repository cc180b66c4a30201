"""The arithmetic of a SecAgg+ round on the server: add the masked updates, route the
encrypted shares and the confirmations, rebuild the secrets, remove every mask, and check
the weights.

Everything here is uint32 arithmetic modulo 2^32 on quantized integers, a tensor (and a
chunk) at a time; only `mean_update` returns floats, and only for the survivors' sum.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType
from flwr.common.secure_aggregation.crypto.shamir import combine_shares

from flowerbed.config.secure import SecureAggregationConfig
from flowerbed.model.transport import ndarray_view
from flowerbed.protocol import TrainReply
from flowerbed.secagg.contract import MASKED, WEIGHT_FACTOR, Key, layout
from flowerbed.secagg.masks import Mask, apply_masks, pairwise_mask, pairwise_sign, self_mask
from flowerbed.secagg.quantization import dequantize_mean
from flowerbed.server.replies import FederationError

Shapes = Mapping[str, tuple[int, ...]]


class SecureAggregationFailed(FederationError):
    """Too few clients remained for the round's masks to be removed; says how many."""


@dataclass
class MaskedSum:
    """The collect stage's masked updates, added up."""

    total: dict[str, np.ndarray]
    """uint32, by name in `layout` order (the weight factor first)."""
    survivors: dict[int, TrainReply] = field(default_factory=dict)
    """The nodes whose masked update is in the total, with their reply's metrics."""
    left_out: dict[int, str] = field(default_factory=dict)
    """Partition id -> why its masked update was left out (it counts as dropped out)."""
    largest: int = 0
    """The bytes of the largest masked update one client sent."""


def masked_sum(replies: list[Message], shapes: Shapes) -> MaskedSum:
    """The sum of the masked updates in the collect stage's replies. Each is read in place
    and dropped from its reply once added (at 125M parameters each is half a gigabyte, and
    the replies are kept for their metrics); one of the wrong layout is left out."""
    expected = layout(shapes)
    summed = MaskedSum({name: np.zeros(shape, np.uint32) for name, shape in expected})
    for reply in replies:
        if reply.has_error() or reply.metadata.message_type != MessageType.TRAIN:
            continue
        if MASKED not in reply.content.array_records:
            continue  # a refusal
        record = reply.content.array_records[MASKED]
        metrics = TrainReply.from_content(reply.content)
        views = _views(record)
        if [(n, v.shape, v.dtype) for n, v in sorted(views.items())] != sorted(
            (n, s, np.dtype(np.uint32)) for n, s in expected
        ):
            summed.left_out[metrics.partition_id] = (
                f"client {metrics.partition_id}'s masked update does not have the round's "
                "layout (uint32 arrays of the model's shapes): it counts as dropped out"
            )
        else:
            for name, view in views.items():
                np.add(summed.total[name], view, out=summed.total[name])
            summed.survivors[reply.metadata.src_node_id] = metrics
            summed.largest = max(summed.largest, sum(len(a.data) for a in record.values()))
        del views
        record.clear()
    return summed


def _views(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The record's arrays read in place (none when one is not a readable `.npy`)."""
    try:
        return {name: ndarray_view(array) for name, array in record.items()}
    except ValueError:
        return {}


def forward(replies: dict[int, ConfigRecord], key: str) -> dict[int, tuple[list[bytes], list[int]]]:
    """What each node's neighbours addressed to it (`key`: the encrypted shares or the
    confirmations, which the server can neither read nor make), with their sources."""
    forwarded: dict[int, tuple[list[bytes], list[int]]] = {n: ([], []) for n in replies}
    for source, config in replies.items():
        destinations = cast(list[int], config[Key.DESTINATIONS])
        payloads = cast(list[bytes], config[key])
        for destination, payload in zip(destinations, payloads, strict=True):
            if destination in forwarded:
                forwarded[destination][0].append(payload)
                forwarded[destination][1].append(source)
    return forwarded


def shares_by_owner(replies: dict[int, ConfigRecord], nodes: set[int]) -> dict[int, list[bytes]]:
    """The unmask stage's shares, grouped by the node whose secret they rebuild."""
    shares: dict[int, list[bytes]] = {node: [] for node in nodes}
    for config in replies.values():
        owners = cast(list[int], config[Key.NODE_IDS])
        for owner, share in zip(owners, cast(list[bytes], config[Key.SHARES]), strict=True):
            if owner in shares:
                shares[owner].append(share)
    return shares


def remove_masks(
    total: dict[str, np.ndarray],
    shares: dict[int, list[bytes]],
    keys: dict[int, tuple[bytes, bytes]],
    survivors: set[int],
    threshold: int,
) -> None:
    """Remove every mask from the masked sum, in place.

    `keys`: the round's nodes (each masked with every other) and their public keys;
    `survivors`: those whose updates are in the sum. A survivor's self mask is removed,
    and a dropped node's pairwise masks with the survivors.
    """
    masks: list[Mask] = []
    for owner in sorted(keys):
        if len(shares[owner]) < threshold:
            raise SecureAggregationFailed(
                f"secure aggregation: {len(shares[owner])} share(s) of node {owner}'s secret "
                f"came back, fewer than the threshold {threshold}; the round's sum cannot be "
                "unmasked (too many clients dropped out)"
            )
        secret = combine_shares(shares[owner])
        if owner in survivors:
            masks.append((self_mask(secret), -1))
            continue
        for neighbour in sorted(survivors):  # each added it with its sign
            mask = pairwise_mask(secret, keys[neighbour][0])
            masks.append((mask, -pairwise_sign(neighbour, owner)))
    for name in total:  # `layout` order: the order the clients read their masks in
        apply_masks(total[name], masks)


def mean_update(
    total: dict[str, np.ndarray], survivors: int, trained: int, cfg: SecureAggregationConfig
) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """The survivors' weighted mean update from their unmasked sum, or None and why the
    sum is rejected: the weight factors must add up to what `survivors` clients, of which
    `trained` trained, can have claimed."""
    weights = int(total[WEIGHT_FACTOR][0])
    problem = weight_problem(weights, survivors, trained, cfg)
    if problem:
        return None, problem
    c, bits = cfg.clipping_range, cfg.quantization_bits
    return {
        name: dequantize_mean(vector, survivors, weights, c, bits)
        for name, vector in total.items()
        if name != WEIGHT_FACTOR
    }, None


def weight_problem(
    weights: int, survivors: int, trained: int, cfg: SecureAggregationConfig
) -> str | None:
    """Why the survivors' total weight factor cannot be honest (None: it can be). Each
    client's factor is its weight over `max_weight` times 2^bits, at most 2^bits; with
    `max_weight=1` every client that trained weighs exactly 1 and one that did not 0."""
    levels, bits = 1 << cfg.quantization_bits, cfg.quantization_bits
    rejected = "the round's sum is rejected"
    if weights == 0:
        return f"secure aggregation: the survivors' weights add up to 0; {rejected}"
    if weights > survivors * levels:
        return (
            f"secure aggregation: the survivors' weight factors add up to {weights}, more "
            f"than {survivors} client(s) x 2^{bits} can claim (a client wrote a weight above "
            f"secagg.max_weight={cfg.max_weight:g}); {rejected}"
        )
    if cfg.max_weight == 1 and weights != trained * levels:
        return (
            f"secure aggregation: the survivors' weight factors add up to {weights / levels:g}"
            f" x 2^{bits}, but {trained} of the {survivors} survivors trained and each weighs "
            f"exactly 1 (secagg.max_weight=1): a client wrote a weight it does not have; "
            f"{rejected}"
        )
    return None
