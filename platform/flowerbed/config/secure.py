"""The config section for secure aggregation (SecAgg+): the coordinator sees only a sum.

`federation.secure_aggregation=secaggplus` switches it on; these are its parameters
(`server/secure_aggregation.py` runs the protocol, Flower's `secaggplus_mod` the clients'
side).
"""

from __future__ import annotations

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
    least this many neighbours remain, and fewer colluding clients learn nothing."""
    clipping_range: Annotated[float, positive()]
    """Each coordinate of a client's update (its weights minus the global ones) is clipped
    to +-this before it is quantized (1.0: far beyond what a round of AdamW moves)."""
    quantization_bits: Annotated[int, Range(8, 28)]
    """Bits per coordinate: the mean's error is at most 2 x clipping_range / 2^bits."""
    max_weight: Annotated[float, positive()]
    """The largest aggregation weight a client may claim (the server cannot see it): 1
    weighs every update the same; a larger value weighs by examples up to it, at
    max_weight times the quantization error."""
