"""The config section for secure aggregation (SecAgg+): the coordinator sees only a sum.

`federation.secure_aggregation=secaggplus` switches it on; these are its parameters
(`server/secure_aggregation.py` runs the protocol, `client/secure.py` the clients' side).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

from flowerbed.config.rules import Range, Section, at_least, positive


@dataclass
class SecureAggregationConfig(Section):
    """SecAgg+ (Bell et al. 2020) with every client of a round every other's neighbour:
    pairwise masks between all of them, Shamir shares of the secrets so the masks of
    clients that drop out can still be removed, and a consistency check before any
    share is revealed (Bonawitz et al. 2017)."""

    key = "secagg"
    threshold: Annotated[int | None, at_least(2)]
    """Shares needed to remove a client's masks (null: two thirds of the round's clients,
    at least 2): the round survives clients dropping out after the key exchange while at
    least this many remain, and the coordinator unmasks no sum of fewer. It must exceed
    half the clients, or two survivor lists could each be confirmed by `threshold` clients
    and a coordinator telling them different stories could rebuild both of a client's
    secrets; clients colluding with such a coordinator must stay fewer than
    2 x threshold - clients (at the default, about a third of the round)."""
    clipping_range: Annotated[float, positive()]
    """Each coordinate of a client's update (its weights minus the global ones) is clipped
    to +-this before it is quantized (1.0: far beyond what a round of AdamW moves)."""
    quantization_bits: Annotated[int, Range(8, 28)]
    """Bits per coordinate: the mean's error is at most 2 x clipping_range / 2^bits."""
    max_weight: Annotated[float, positive()]
    """The largest aggregation weight a client may claim: 1 weighs every update the same;
    a larger value weighs by examples up to it, at max_weight times the quantization
    error. A client's weight travels masked, clamped to this; the server checks only the
    survivors' total (exactly one per client that trained when this is 1)."""

    def threshold_of(self, clients: int) -> int:
        """The threshold of a round of `clients`."""
        return self.threshold or max(2, math.ceil(2 * clients / 3))

    def problem(self, clients: int) -> str | None:
        """Why a round of `clients` cannot run with these settings (None: it can)."""
        if clients < 3:
            return (
                f"federation.secure_aggregation needs at least 3 clients a round, not "
                f"{clients}: with two, each client could subtract its own update from the sum "
                "and read the other"
            )
        threshold = self.threshold_of(clients)
        if threshold > clients:
            return (
                f"secagg.threshold={threshold} is more shares than the {clients} clients of "
                "the round: lower it"
            )
        if 2 * threshold <= clients:
            return (
                f"secagg.threshold={threshold} is at most half of the round's {clients} "
                "clients: a coordinator lying about who dropped out could rebuild both of a "
                f"client's secrets; raise it above {clients // 2}"
            )
        # each client's coordinate (and weight factor) is at most 2^bits, inclusive
        if clients << self.quantization_bits >= 1 << 32:
            return (
                f"{clients} clients of secagg.quantization_bits={self.quantization_bits} "
                "overflow the protocol's 32-bit sum (clients x 2^bits must stay below 2^32): "
                "lower the bits, or sample fewer clients"
            )
        return None
