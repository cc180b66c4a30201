"""What a SecAgg+ round's Messages carry, defined once for the ServerApp and the node's mod.

A round is five train Messages per client, each naming its stage in the `CONFIGS` record.
Every client of a round is every other's neighbour:

1. setup: the round's parameters (`RoundSetup`); the reply: two fresh public keys;
2. share keys: the neighbours' ids and public keys; the reply: Shamir shares of the node's
   two secrets, each encrypted for one neighbour (`DESTINATIONS`, `CIPHERTEXTS`);
3. collect: the shares of every other neighbour (`SOURCES`, `CIPHERTEXTS`) beside the
   train instructions; the reply: the train reply's metrics and the masked update
   (`MASKED`, an ArrayRecord of uint32 arrays laid out as `layout` says);
4. consistency check: who is active (sent a masked update) and who dropped out, covering
   the neighbours exactly (`ACTIVE`, `DEAD`); the reply: a confirmation of that list for
   each other neighbour, a MAC under the key the two share (`DESTINATIONS`, `CONFIRMATIONS`);
5. unmask: the confirmations meant for the node (`SOURCES`, `CONFIRMATIONS`); the reply:
   the shares that rebuild the active ones' self-mask seeds and the dead ones' mask keys.

A node that refuses the round (`client/secure_checks.py`) answers any stage with a
`TrainReply` carrying its sentence (`refused`) instead, and sends nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Self

CONFIGS = "secagg"
"""The ConfigRecord of each stage's Message and reply."""
MASKED = "secagg-masked"
"""The collect reply's ArrayRecord: the masked update, uint32."""
UPDATE = "secagg-update"
"""The ArrayRecord in which the ClientApp hands its clear update to the mod, beside the
weight (`Key.WEIGHT` in `CONFIGS`); the mod replaces it by `MASKED`, so it never leaves."""
STATE = "secagg-state"
"""The node's protocol state in its Context, kept by the SuperNode between Messages."""
WEIGHT_FACTOR = "weight-factor"
"""The masked update's first array: the client's weight, quantized (a name no tensor can
have)."""
MODULUS_BITS = 32
"""Masked values and their sum live in uint32: arithmetic modulo 2^32."""


class Stage:
    SETUP = "setup"
    SHARE_KEYS = "share_keys"
    COLLECT = "collect_masked_vectors"
    CONSISTENCY = "consistency_check"
    UNMASK = "unmask"
    ORDER = (SETUP, SHARE_KEYS, COLLECT, CONSISTENCY, UNMASK)


class Key:
    STAGE = "stage"
    PUBLIC_KEY_1 = "pk1"
    """The key pair whose ECDH secrets make the pairwise masks."""
    PUBLIC_KEY_2 = "pk2"
    """The key pair whose ECDH secrets encrypt the shares between neighbours."""
    NODE_IDS = "nids"
    PUBLIC_KEYS_1 = "pk1s"
    PUBLIC_KEYS_2 = "pk2s"
    DESTINATIONS = "dsts"
    CIPHERTEXTS = "ctxts"
    SOURCES = "srcs"
    ACTIVE = "active_nids"
    DEAD = "dead_nids"
    SHARES = "shares"
    CONFIRMATIONS = "confirmations"
    """A node's MACs of the survivor list it was told, one per other neighbour."""
    WEIGHT = "weight"


@dataclass(frozen=True)
class RoundSetup:
    """The parameters the coordinator announces at set-up; the node checks them."""

    sample: int
    """Clients sampled for the round."""
    neighbours: int
    """Clients each one shares masks with, itself included: the whole sample (the node
    refuses any other count, and a neighbour set of another size)."""
    threshold: int
    """Shares that rebuild one client's secret."""
    clipping_range: float
    bits: int
    """Quantization: each coordinate becomes an integer in [0, 2^bits]."""
    max_weight: float

    def to_config(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        """The setup a stage Message announces; ValueError names a missing or odd value."""
        values: dict[str, Any] = {}
        for field in fields(cls):
            kind = int if field.type == "int" else float
            value = config.get(field.name)
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ValueError(f"the SecAgg+ set-up lacks a number for {field.name}")
            if kind is int and value != int(value):
                raise ValueError(f"the SecAgg+ set-up's {field.name} is not an integer")
            values[field.name] = kind(value)
        return cls(**values)


def layout(shapes: Mapping[str, tuple[int, ...]]) -> list[tuple[str, tuple[int, ...]]]:
    """The masked update's arrays in mask order: the weight factor, then the update's
    tensors by name. Both sides read each mask's keystream in this order, so it must not
    depend on how a record happened to be ordered in transit."""
    return [(WEIGHT_FACTOR, (1,)), *sorted(shapes.items())]
