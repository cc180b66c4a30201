"""Secure aggregation (SecAgg+, Bell et al. 2020), the server's side: only a sum is seen.

Flower 1.41 ships the clients' side as a ClientApp mod (`secaggplus_mod`, which
flowerbed's ClientApp runs as it is: `client/secure.py`) and the server's side as
`SecAggPlusWorkflow`, written for Flower's legacy Strategy interface (FitIns/FitRes, a
LegacyContext, its own round loop), which flowerbed's round engine and Message protocol
do not use. So this module drives the same four stages over the Grid, with the Message
contract the mod expects and Flower's own primitives (Shamir sharing, key agreement,
pseudo-random masks, quantization):

1. setup: each sampled client makes two key pairs and sends the public keys;
2. share keys: each client gets its neighbours' public keys and sends Shamir shares of
   its secrets, encrypted for each neighbour;
3. collect: each client gets its shares and the train Message, trains, and sends its
   update quantized and masked (a private mask, and pairwise masks that cancel in the
   sum) with its metrics; the server adds the masked vectors;
4. unmask: the survivors send the shares that remove the survivors' private masks and
   the pairwise masks of clients that dropped out after the key exchange.

What the server reconstructs is the weighted mean of the survivors' updates (their
weights minus the global ones, each coordinate clipped to `secagg.clipping_range`),
within quantization error. It never holds one client's update.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.serverapp import Grid

from flowerbed.config import FlowerbedConfig
from flowerbed.config.secure import SecureAggregationConfig
from flowerbed.server.secure_masks import (
    MOD_RANGE,
    SecureAggregationFailed,
    forward_shares,
    masked_sum,
    remove_masks,
    shares_by_owner,
    weighted_mean,
)


@dataclass
class SecureSum:
    """What a secure round gives the server."""

    replies: list[Message]
    """The collect stage's train replies (metrics only: their arrays are cleared) and
    any evaluate replies sent with them."""
    mean_update: list[np.ndarray] | None
    """The survivors' weighted mean update, in the order the clients sent it (None: no
    survivor had a weight)."""
    masked_bytes: int
    """The masked vector one client sent."""


class SecAggPlus:
    """One secure round over the Grid: setup, share keys, collect, unmask."""

    def __init__(self, cfg: SecureAggregationConfig, timeout: float) -> None:
        self.cfg, self.timeout = cfg, timeout
        self.target_range = 2**cfg.quantization_bits

    def run(self, grid: Grid, train: list[Message], others: list[Message]) -> SecureSum:
        """The secure sum of the updates `train` asks for; `others` (evaluate Messages)
        travel with the collect stage."""
        nodes = [m.metadata.dst_node_id for m in train]
        problem = self.cfg.problem(len(nodes))
        if problem is not None:
            raise SecureAggregationFailed(f"secure aggregation: {problem}")
        shares, threshold = self.cfg.sizes(len(nodes))
        random.shuffle(nodes)  # the neighbour ring (the engine seeds `random` per round)
        half = shares // 2
        ring = {
            nid: {nodes[(i + k) % len(nodes)] for k in range(-half, half + 1)}
            for i, nid in enumerate(nodes)
        }
        setup = {
            Key.SAMPLE_NUMBER: len(nodes),
            Key.SHARE_NUMBER: shares,
            Key.THRESHOLD: threshold,
            Key.CLIPPING_RANGE: float(self.cfg.clipping_range),
            Key.TARGET_RANGE: self.target_range,
            Key.MOD_RANGE: MOD_RANGE,
            Key.MAX_WEIGHT: float(self.cfg.max_weight),
        }
        replies = self._stage(grid, Stage.SETUP, {n: setup for n in nodes})
        keys = {
            n: [cast(bytes, c[Key.PUBLIC_KEY_1]), cast(bytes, c[Key.PUBLIC_KEY_2])]
            for n, c in replies.items()
        }
        self._enough(keys, threshold, "the key set-up")
        replies = self._stage(
            grid,
            Stage.SHARE_KEYS,
            {n: {str(m): keys[m] for m in ring[n] & keys.keys()} for n in keys},
        )
        self._enough(replies, threshold, "the key exchange")
        shared = set(replies)
        forwarded = forward_shares(replies)
        contents = {m.metadata.dst_node_id: m.content for m in train}
        collected = self._collect(grid, forwarded, contents, others)
        survivors = {
            m.metadata.src_node_id
            for m in collected
            if not m.has_error() and m.metadata.message_type == MessageType.TRAIN
        }
        self._enough(survivors, threshold, "training")
        masked, nbytes = masked_sum(collected)
        dead = set(nodes) - survivors
        unmasked = self._stage(
            grid,
            Stage.UNMASK,
            {
                n: {
                    Key.ACTIVE_NODE_ID_LIST: list(ring[n] & survivors),
                    Key.DEAD_NODE_ID_LIST: list(ring[n] & dead),
                }
                for n in survivors
            },
        )
        self._enough(unmasked, threshold, "the unmask stage")
        owned = shares_by_owner(unmasked, set(ring))
        total = remove_masks(masked, owned, ring, keys, (shared, survivors), threshold)
        mean = weighted_mean(total, len(survivors), self.cfg.clipping_range, self.target_range)
        return SecureSum(collected, mean, nbytes)

    def _stage(
        self, grid: Grid, stage: str, configs: dict[int, dict[str, Any]]
    ) -> dict[int, ConfigRecord]:
        """Send each node its stage config; the successful replies' configs by node."""
        messages = [
            Message(
                RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({Key.STAGE: stage, **config})}),
                dst_node_id=node,
                message_type=MessageType.TRAIN,
            )
            for node, config in configs.items()
        ]
        replies = grid.send_and_receive(messages, timeout=self.timeout)
        return {
            m.metadata.src_node_id: m.content.config_records[RECORD_KEY_CONFIGS]
            for m in replies
            if not m.has_error()
        }

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
            content[RECORD_KEY_CONFIGS] = ConfigRecord(
                {
                    Key.STAGE: Stage.COLLECT_MASKED_VECTORS,
                    Key.CIPHERTEXT_LIST: ciphertexts,
                    Key.SOURCE_LIST: sources,
                }
            )
            messages.append(Message(content, dst_node_id=node, message_type=MessageType.TRAIN))
        return list(grid.send_and_receive([*messages, *others], timeout=self.timeout))

    @staticmethod
    def _enough(present, threshold: int, stage: str) -> None:
        if len(present) < threshold:
            raise SecureAggregationFailed(
                f"secure aggregation: {len(present)} client(s) remained after {stage}, "
                f"fewer than secagg.threshold={threshold}; the round cannot be unmasked"
            )


def secure_aggregation(cfg: FlowerbedConfig) -> SecAggPlus | None:
    """The run's secure aggregation protocol (None: `federation.secure_aggregation=off`)."""
    if cfg.federation.secure_aggregation == "off":
        return None
    return SecAggPlus(cfg.secagg, cfg.federation.round_timeout)


def as_update(mean: list[np.ndarray], names: list[str]) -> dict[str, torch.Tensor]:
    """The reconstructed mean update as named fp32 tensors (the clients' order)."""
    return {
        name: torch.from_numpy(np.asarray(a, dtype=np.float32))
        for name, a in zip(names, mean, strict=True)
    }
