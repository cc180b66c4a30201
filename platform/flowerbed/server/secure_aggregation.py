"""Secure aggregation (SecAgg+, Bell et al. 2020), the server's side: only a sum is seen.

flowerbed owns both sides of the protocol: this module drives the four stages over the
Grid, the node's mod (`client/secure.py`) answers them, and both speak the contract in
`flowerbed.secagg`. Flower's `SecAggPlusWorkflow` is written for the legacy Strategy
interface, and its masks came from a generator seeded with 32 bits folded from each key
(`secagg/masks.py` says why that broke the protocol); Shamir sharing, key agreement and
the share encryption are still Flower's.

Every client of a round is every other's neighbour.

1. setup: each sampled client checks the round's parameters and makes two key pairs;
2. share keys: each client gets the others' public keys and sends Shamir shares of its
   secrets, encrypted for each of them. If any client does not answer the set-up or the
   key exchange (or refuses), both run again without it: a client masks with every
   other or refuses, so every one must have every other's shares;
3. collect: each client gets the others' shares and the train Message, trains, and sends
   its update quantized and masked (a self mask, and pairwise masks that cancel in the
   sum) with its metrics; the server adds the masked updates;
4. consistency check: each survivor is told who sent a masked update and who dropped
   out, and confirms that list to each other client (a MAC the server cannot make);
5. unmask: each survivor gets the confirmations meant for it and, when at least
   `threshold` clients hold its list, sends the shares that remove the survivors' self
   masks and the pairwise masks of clients that dropped out after the key exchange.

What the server reconstructs is the weighted mean of the survivors' updates (their
weights minus the global ones, each coordinate clipped to `secagg.clipping_range`),
within quantization error, once the weights add up to what the survivors may claim
(`secure_masks.weight_problem`). It never holds one client's update. A node's refusal
(one sentence) travels as its reply to the stage it refused; it is kept for the round's
records.
"""

from __future__ import annotations

import logging
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
    forward,
    masked_sum,
    mean_update,
    remove_masks,
    shares_by_owner,
)
from flowerbed.server.secure_stage import Ring, enough, send_stage, with_refusals

log = logging.getLogger("flowerbed")


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
    """One secure round over the Grid: setup, share keys, collect, consistency check,
    unmask."""

    def __init__(self, cfg: SecureAggregationConfig, timeout: float) -> None:
        self.cfg, self.timeout = cfg, timeout

    def run(
        self, grid: Grid, train: list[Message], others: list[Message], shapes: Shapes
    ) -> SecureSum:
        """The secure sum of the updates `train` asks for; `others` (evaluate Messages)
        travel with the collect stage; `shapes`: the update's floating-point tensors."""
        refusals: list[Message] = []
        ring = self._keys(grid, [m.metadata.dst_node_id for m in train], refusals)
        contents = {m.metadata.dst_node_id: m.content for m in train}
        shares = forward(ring.shared, Key.CIPHERTEXTS)
        collected = self._collect(grid, shares, contents, others)
        summed = masked_sum(collected, shapes)
        enough(summed.survivors, ring.setup.threshold, "training", refusals)
        self._unmask(grid, ring, summed, refusals)
        trained = sum(1 for r in summed.survivors.values() if _trained(r))
        mean, rejected = mean_update(summed.total, len(summed.survivors), trained, self.cfg)
        return SecureSum(
            [*collected, *refusals],
            {n: torch.from_numpy(v) for n, v in mean.items()} if mean else None,
            summed.largest,
            rejected,
            {str(p): why for p, why in summed.left_out.items()},
        )

    def _keys(self, grid: Grid, nodes: list[int], refusals: list[Message]) -> Ring:
        """The round's nodes, their keys and their shares: the set-up and the key exchange
        run again without any node that did not answer either, until every node left has
        (or too few are left)."""
        while True:
            setup = self._setup(nodes, refusals)
            asked = dict.fromkeys(nodes, setup.to_config())
            replies, refused = send_stage(grid, Stage.SETUP, asked, self.timeout)
            refusals += refused
            if set(replies) != set(nodes):
                nodes = [n for n in nodes if n in replies]
                continue
            keys = {
                n: (cast(bytes, c[Key.PUBLIC_KEY_1]), cast(bytes, c[Key.PUBLIC_KEY_2]))
                for n, c in replies.items()
            }
            shared = self._share_keys(grid, keys, refusals)
            if set(shared) == set(nodes):
                return Ring(setup, keys, shared)
            nodes = [n for n in nodes if n in shared]

    def _setup(self, nodes: list[int], refusals: list[Message]) -> RoundSetup:
        """The parameters of a round of `nodes`, or the sentence why there can be none."""
        problem = self.cfg.problem(len(nodes))
        if problem is not None:
            sentence = f"secure aggregation: {problem}"
            raise SecureAggregationFailed(with_refusals(sentence, refusals))
        return RoundSetup(
            len(nodes),
            len(nodes),
            self.cfg.threshold_of(len(nodes)),
            float(self.cfg.clipping_range),
            self.cfg.quantization_bits,
            float(self.cfg.max_weight),
        )

    def _share_keys(
        self, grid: Grid, keys: dict[int, tuple[bytes, bytes]], refusals: list[Message]
    ) -> dict[int, ConfigRecord]:
        """The key exchange: each node's encrypted shares, by node."""
        ids = sorted(keys)
        config = {
            Key.NODE_IDS: ids,
            Key.PUBLIC_KEYS_1: [keys[n][0] for n in ids],
            Key.PUBLIC_KEYS_2: [keys[n][1] for n in ids],
        }
        asked = dict.fromkeys(ids, config)
        replies, refused = send_stage(grid, Stage.SHARE_KEYS, asked, self.timeout)
        refusals += refused
        return replies

    def _unmask(self, grid: Grid, ring: Ring, summed: MaskedSum, refusals: list[Message]) -> None:
        """The consistency check, then the shares that remove every mask, removed."""
        survivors, threshold = set(summed.survivors), ring.setup.threshold
        story = {
            Key.ACTIVE: sorted(survivors),
            Key.DEAD: sorted(set(ring.keys) - survivors),
        }
        asked = dict.fromkeys(sorted(survivors), story)
        confirmed, refused = send_stage(grid, Stage.CONSISTENCY, asked, self.timeout)
        refusals += refused
        enough(confirmed, threshold, "the consistency check", refusals)
        confirmations = {
            node: {Key.CONFIRMATIONS: tags, Key.SOURCES: sources}
            for node, (tags, sources) in forward(confirmed, Key.CONFIRMATIONS).items()
        }
        unmasked, refused = send_stage(grid, Stage.UNMASK, confirmations, self.timeout)
        refusals += refused
        enough(unmasked, threshold, "the unmask stage", refusals)
        owned = shares_by_owner(unmasked, set(ring.keys))
        remove_masks(summed.total, owned, ring.keys, survivors, threshold)

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
    if not isinstance(cfg.federation.max_update_norm, int | float):
        log.warning(
            "secure aggregation hides each update, so federation.max_update_norm=%s bounds "
            "nothing and one hostile institution can move the model at will: give it a number",
            cfg.federation.max_update_norm,
        )
    return SecAggPlus(cfg.secagg, cfg.federation.round_timeout)


def float_shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """The shapes of the floating-point tensors of a state dict: what a client's update
    holds, and so what its masked update must hold."""
    return {n: tuple(t.shape) for n, t in state.items() if t.is_floating_point()}
