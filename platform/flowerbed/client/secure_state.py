"""What a node remembers between the Messages of a SecAgg+ round.

It lives in the node's Context (`contract.STATE`), which the SuperNode keeps between the
Messages of a run and never sends anywhere; a fresh ClientApp process reads it back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Self, cast

from flwr.app import ConfigRecord, Context

from flowerbed.secagg.contract import STATE, RoundSetup, Stage


@dataclass
class SecAggState:
    stage: str = Stage.UNMASK
    """The last stage answered (unmask: no round under way, only a set-up may come)."""
    node_id: int = 0
    setup: RoundSetup | None = None
    sk1: bytes = b""
    """The private key whose ECDH secrets with the neighbours make the pairwise masks."""
    sk2: bytes = b""
    """The private key whose ECDH secrets encrypt the shares sent to the neighbours."""
    pk1: bytes = b""
    pk2: bytes = b""
    mask_seed: bytes = b""
    """The self-mask seed (256 random bits)."""
    neighbours: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    """Each neighbour's public keys, this node's own included, as the coordinator sent them."""
    seed_shares: dict[int, bytes] = field(default_factory=dict)
    """The shares of each neighbour's self-mask seed this node holds (its own included)."""
    key_shares: dict[int, bytes] = field(default_factory=dict)
    """The shares of each neighbour's first private key this node holds."""
    active: list[int] = field(default_factory=list)
    """The survivor list this node confirmed in the consistency check (sorted): the one
    it reveals shares by."""

    def save(self, context: Context) -> None:
        values: dict = {"stage": self.stage, "node_id": self.node_id}
        values |= {k: getattr(self, k) for k in ("sk1", "sk2", "pk1", "pk2", "mask_seed")}
        if self.setup is not None:
            values |= {f"setup.{k}": v for k, v in self.setup.to_config().items()}
        values["neighbours"] = list(self.neighbours)
        values["neighbour_keys"] = [k for pair in self.neighbours.values() for k in pair]
        values["share_owners"] = list(self.seed_shares)
        values["seed_shares"] = list(self.seed_shares.values())
        values["key_shares"] = [self.key_shares[n] for n in self.seed_shares]
        values["active"] = list(self.active)
        context.state.config_records[STATE] = ConfigRecord(values)

    @classmethod
    def load(cls, context: Context) -> Self:
        """The node's state (a fresh one before its first round)."""
        if STATE not in context.state.config_records:
            return cls()
        values = dict(context.state.config_records[STATE])
        setup = {k.removeprefix("setup."): v for k, v in values.items() if k.startswith("setup.")}
        ids, keys = (
            cast(list[int], values["neighbours"]),
            cast(list[bytes], values["neighbour_keys"]),
        )
        owners = cast(list[int], values["share_owners"])
        return cls(
            stage=cast(str, values["stage"]),
            node_id=cast(int, values["node_id"]),
            setup=RoundSetup.from_config(setup) if setup else None,
            **{k: cast(bytes, values[k]) for k in ("sk1", "sk2", "pk1", "pk2", "mask_seed")},
            neighbours={n: (keys[2 * i], keys[2 * i + 1]) for i, n in enumerate(ids)},
            seed_shares=dict(zip(owners, cast(list[bytes], values["seed_shares"]), strict=True)),
            key_shares=dict(zip(owners, cast(list[bytes], values["key_shares"]), strict=True)),
            active=cast(list[int], values["active"]),
        )
