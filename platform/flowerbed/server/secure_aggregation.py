"""Secure aggregation (SecAgg+, Bell et al. 2020), the server's side: only a sum is seen.

flowerbed owns both sides of the protocol: this module drives the four stages over the
Grid, the node's mod (`client/secure.py`) answers them, and both speak the contract in
`flowerbed.secagg`. Flower's `SecAggPlusWorkflow` is written for the legacy Strategy
interface, and its masks came from a generator seeded with 32 bits folded from each key
(`secagg/masks.py` says why that broke the protocol); Shamir sharing, key agreement and
the share encryption are still Flower's.

1. setup: each sampled client checks the round's parameters and makes two key pairs; if
   any does not answer (or refuses), the set-up runs again without it, so every node
   receives exactly the neighbours the set-up announced;
2. share keys: each client gets its neighbours' public keys and sends Shamir shares of
   its secrets, encrypted for each neighbour;
3. collect: each client gets its shares and the train Message, trains, and sends its
   update quantized and masked (a self mask, and pairwise masks that cancel in the sum)
   with its metrics; the server adds the masked updates;
4. unmask: the survivors send the shares that remove the survivors' self masks and the
   pairwise masks of clients that dropped out after the key exchange.

What the server reconstructs is the weighted mean of the survivors' updates (their
weights minus the global ones, each coordinate clipped to `secagg.clipping_range`),
within quantization error, once the weights add up to what the survivors may claim
(`secure_masks.weight_problem`). It never holds one client's update. A node's refusal
(one sentence) travels as its reply to the stage it refused; it is kept for the round's
records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import torch
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from flowerbed.config import FlowerbedConfig
from flowerbed.config.secure import SecureAggregationConfig
from flowerbed.protocol import TrainReply
from flowerbed.secagg.contract import CONFIGS, Key, RoundSetup, Stage
from flowerbed.server.secure_masks import (
    MaskedSum,
    SecureAggregationFailed,
    Shapes,
    forward_shares,
    masked_sum,
    mean_update,
    remove_masks,
    shares_by_owner,
)
from flowerbed.server.secure_stage import (
    Ring,
    enough,
    neighbour_ring,
    send_stage,
    with_refusals,
)


@dataclass
class SecureSum:
    """What a secure round gives the server."""

    replies: list[Message]
    """The collect stage's train replies (metrics only: their masked updates are dropped
    once summed), any evaluate replies sent with them, and every refusal."""
    mean_update: dict[str, torch.Tensor] | None
    """The survivors' weighted mean update (None: the sum was rejected)."""
    masked_bytes: int
    """The masked update one client sent."""
    rejected: str | None = None
    """Why the round's sum was rejected (its weights cannot be honest)."""
    left_out: dict[str, str] = field(default_factory=dict)
    """Partition id -> why that client's masked update was left out of the sum."""


class SecAggPlus:
    """One secure round over the Grid: setup, share keys, collect, unmask."""

    def __init__(self, cfg: SecureAggregationConfig, timeout: float) -> None:
        self.cfg, self.timeout = cfg, timeout

    def run(
        self, grid: Grid, train: list[Message], others: list[Message], shapes: Shapes
    ) -> SecureSum:
        """The secure sum of the updates `train` asks for; `others` (evaluate Messages)
        travel with the collect stage; `shapes`: the update's floating-point tensors."""
        refusals: list[Message] = []
        ring = self._set_up(grid, [m.metadata.dst_node_id for m in train], refusals)
        shared = self._share_keys(grid, ring, refusals)
        contents = {m.metadata.dst_node_id: m.content for m in train}
        collected = self._collect(grid, forward_shares(shared), contents, others)
        summed = masked_sum(collected, shapes)
        enough(summed.survivors, ring.setup.threshold, "training", refusals)
        self._unmask(grid, ring, summed, set(shared), refusals)
        trained = sum(1 for r in summed.survivors.values() if _trained(r))
        mean, rejected = mean_update(summed.total, len(summed.survivors), trained, self.cfg)
        return SecureSum(
            [*collected, *refusals],
            {n: torch.from_numpy(v) for n, v in mean.items()} if mean else None,
            summed.largest,
            rejected,
            {str(p): why for p, why in summed.left_out.items()},
        )

    def _set_up(self, grid: Grid, nodes: list[int], refusals: list[Message]) -> Ring:
        """The round's neighbours and keys: the set-up runs again without any node that
        did not answer it, until every node left has (or too few are left)."""
        while True:
            problem = self.cfg.problem(len(nodes))
            if problem is not None:
                sentence = f"secure aggregation: {problem}"
                raise SecureAggregationFailed(with_refusals(sentence, refusals))
            shares, threshold = self.cfg.sizes(len(nodes))
            setup = RoundSetup(
                len(nodes),
                shares,
                threshold,
                float(self.cfg.clipping_range),
                self.cfg.quantization_bits,
                float(self.cfg.max_weight),
            )
            asked = dict.fromkeys(nodes, setup.to_config())
            replies, refused = send_stage(grid, Stage.SETUP, asked, self.timeout)
            refusals += refused
            if set(replies) == set(nodes):
                keys = {
                    n: (cast(bytes, c[Key.PUBLIC_KEY_1]), cast(bytes, c[Key.PUBLIC_KEY_2]))
                    for n, c in replies.items()
                }
                return Ring(setup, neighbour_ring(nodes, shares), keys)
            nodes = [n for n in nodes if n in replies]

    def _share_keys(
        self, grid: Grid, ring: Ring, refusals: list[Message]
    ) -> dict[int, ConfigRecord]:
        """The key exchange: each node's encrypted shares, by node."""
        configs = {}
        for node, neighbours in ring.neighbours.items():
            ids = sorted(neighbours)
            configs[node] = {
                Key.NODE_IDS: ids,
                Key.PUBLIC_KEYS_1: [ring.keys[n][0] for n in ids],
                Key.PUBLIC_KEYS_2: [ring.keys[n][1] for n in ids],
            }
        replies, refused = send_stage(grid, Stage.SHARE_KEYS, configs, self.timeout)
        refusals += refused
        enough(replies, ring.setup.threshold, "the key exchange", refusals)
        return replies

    def _unmask(
        self, grid: Grid, ring: Ring, summed: MaskedSum, shared: set[int], refusals: list[Message]
    ) -> None:
        """Ask the survivors for the shares that remove every mask, and remove them."""
        survivors = set(summed.survivors)
        dead = shared - survivors
        asked = {
            n: {
                Key.ACTIVE: sorted(ring.neighbours[n] & survivors),
                Key.DEAD: sorted(ring.neighbours[n] & dead),
            }
            for n in survivors
        }
        unmasked, refused = send_stage(grid, Stage.UNMASK, asked, self.timeout)
        refusals += refused
        threshold = ring.setup.threshold
        enough(unmasked, threshold, "the unmask stage", refusals)
        owned = shares_by_owner(unmasked, shared)
        present = (shared, survivors)
        remove_masks(summed.total, owned, ring.neighbours, ring.keys, present, threshold)

    def _collect(
        self,
        grid: Grid,
        forwarded: dict[int, tuple[list[bytes], list[int]]],
        contents: dict[int, RecordDict],
        others: list[Message],
    ) -> list[Message]:
        """The train Messages, each with the shares meant for its node; the replies."""
        messages = []
        for node, (ciphertexts, sources) in forwarded.items():
            content = RecordDict(dict(contents[node].items()))  # its own copy
            content[CONFIGS] = ConfigRecord(
                {Key.STAGE: Stage.COLLECT, Key.CIPHERTEXTS: ciphertexts, Key.SOURCES: sources}
            )
            messages.append(Message(content, dst_node_id=node, message_type=MessageType.TRAIN))
        return list(grid.send_and_receive([*messages, *others], timeout=self.timeout))


def _trained(reply: TrainReply) -> bool:
    """Whether a survivor's reply says it trained (one that did not sends weight 0)."""
    return reply.num_examples > 0 and not reply.refused and not reply.budget_exhausted


def secure_aggregation(cfg: FlowerbedConfig) -> SecAggPlus | None:
    """The run's secure aggregation protocol (None: `federation.secure_aggregation=off`)."""
    if cfg.federation.secure_aggregation == "off":
        return None
    return SecAggPlus(cfg.secagg, cfg.federation.round_timeout)


def float_shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """The shapes of the floating-point tensors of a state dict: what a client's update
    holds, and so what its masked update must hold."""
    return {n: tuple(t.shape) for n, t in state.items() if t.is_floating_point()}
