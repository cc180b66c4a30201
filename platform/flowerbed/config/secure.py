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
    """SecAgg+ (Bell et al. 2020): pairwise masks between neighbours, Shamir shares of
    the secrets so the masks of clients that drop out can still be removed."""

    key = "secagg"
    neighbours: Annotated[int | None, at_least(2)]
    """Each client's masking neighbours, itself included (null: every sampled client;
    an even count is raised by one, as the protocol needs)."""
    threshold: Annotated[int | None, at_least(2)]
    """Shares needed to remove a client's masks (null: two thirds of the neighbours, at
    least 2): the round survives clients dropping out after the key exchange while at
    least this many neighbours remain, and fewer colluding clients learn nothing. It
    must exceed half the neighbours, or a coordinator that tells some neighbours a
    client dropped out and others that it did not could rebuild both of its secrets."""
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

    def sizes(self, clients: int) -> tuple[int, int]:
        """Neighbours per client (odd unless every client, at most `clients`) and the
        threshold, for a round of `clients`."""
        neighbours = min(self.neighbours or clients, clients)
        if neighbours < clients and neighbours % 2 == 0:
            neighbours += 1
        return neighbours, self.threshold or max(2, math.ceil(2 * neighbours / 3))

    def problem(self, clients: int) -> str | None:
        """Why a round of `clients` cannot run with these settings (None: it can)."""
        if clients < 3:
            return (
                f"federation.secure_aggregation needs at least 3 clients a round, not "
                f"{clients}: with two, each client could subtract its own update from the sum "
                "and read the other"
            )
        neighbours, threshold = self.sizes(clients)
        if threshold > neighbours:
            return (
                f"secagg.threshold={threshold} is more shares than the {neighbours} "
                "neighbours a client has: lower it, or raise secagg.neighbours"
            )
        if 2 * threshold <= neighbours:
            return (
                f"secagg.threshold={threshold} is at most half of a client's {neighbours} "
                "neighbours: a coordinator lying about who dropped out could rebuild both "
                f"of a client's secrets; raise it above {neighbours // 2}"
            )
        # each client's coordinate (and weight factor) is at most 2^bits, inclusive
        if clients << self.quantization_bits >= 1 << 32:
            return (
                f"{clients} clients of secagg.quantization_bits={self.quantization_bits} "
                "overflow the protocol's 32-bit sum (clients x 2^bits must stay below 2^32): "
                "lower the bits, or sample fewer clients"
            )
        return None
