"""The client's side of secure aggregation: flowerbed's SecAgg+ mod, on the Messages of a
secure round.

The mod answers the key set-up, key exchange, consistency check and unmask stages itself
and calls the ClientApp only in the collect stage: the ClientApp trains and hands back
its clear update (`with_update`), which the mod quantizes and masks
(`client/secure_masking.py`) and replaces, so only the masked update and the reply's
metrics leave the node. Before each
stage sends anything, the node checks the round (`client/secure_checks.py`); a round it
refuses gets one reply, a `TrainReply` whose `refused` names what was wrong, and any
later stage of that round fails (the node forgot it). A stage out of order fails the
Message, so a node never masks two updates with the same masks. The protocol state lives
in the node's Context, which the SuperNode keeps between the Messages of a run. Messages
of a round without secure aggregation pass through untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import cast

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp.typing import ClientAppCallable, Mod

from flowerbed.client.node import Node
from flowerbed.client.secure_masking import masked_update
from flowerbed.client.secure_stages import (
    Refusal,
    confirm,
    receive_shares,
    set_up,
    share_keys,
    unmask,
)
from flowerbed.client.secure_state import SecAggState
from flowerbed.protocol import TrainReply
from flowerbed.secagg.contract import CONFIGS, MASKED, UPDATE, Key, Stage

log = logging.getLogger("flowerbed")


def is_secure(message: Message) -> bool:
    """Whether a Message belongs to a secure round's protocol."""
    return CONFIGS in message.content.config_records


def secure_aggregation_mod(node_of: Callable[[Context], Node]) -> Mod:
    """The mod for the train Messages of a secure round, judging them by the policy of the
    node `node_of` describes; any other Message goes straight to the ClientApp."""

    def mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN or not is_secure(msg):
            return call_next(msg, ctxt)
        node = node_of(ctxt)
        try:
            return Message(_answer(msg, ctxt, call_next, node), reply_to=msg)
        except Refusal as why:
            SecAggState().save(ctxt)  # forget the round: its later stages fail
            sentence = f"client {node.partition_id} refuses the secure round: {why}"
            log.warning("%s", sentence)
            refused = TrainReply(node.partition_id, 0, 0, 0.0, refused=sentence)
            return Message(refused.to_content(), reply_to=msg)

    return mod


def _answer(msg: Message, ctxt: Context, call_next: ClientAppCallable, node: Node) -> RecordDict:
    """The reply's content for the stage `msg` asks for, the state moved on."""
    config = msg.content.config_records[CONFIGS]
    state = SecAggState.load(ctxt)
    stage = _next_stage(state.stage, config)
    if stage == Stage.COLLECT:
        receive_shares(state, config)  # checked before it trains
        state.stage = stage
        state.save(ctxt)
        return _masked_reply(state, call_next(msg, ctxt).content)
    if stage == Stage.SETUP:
        state, reply = set_up(msg.metadata.dst_node_id, config, node.policy)
    else:
        reply = _STAGES[stage](state, config)
    state.stage = stage
    state.save(ctxt)
    return RecordDict({CONFIGS: ConfigRecord({Key.STAGE: stage, **reply})})


_STAGES = {Stage.SHARE_KEYS: share_keys, Stage.CONSISTENCY: confirm, Stage.UNMASK: unmask}


def _next_stage(last: str, config: ConfigRecord) -> str:
    """The stage `config` asks for, if it may follow `last` (a set-up may always come)."""
    stage = config.get(Key.STAGE)
    expected = Stage.ORDER[(Stage.ORDER.index(last) + 1) % len(Stage.ORDER)]
    if stage not in (Stage.SETUP, expected):
        raise ValueError(
            f"secure aggregation: the node expected the {expected} stage, not {stage!r}"
        )
    return cast(str, stage)


def _masked_reply(state: SecAggState, content: RecordDict) -> RecordDict:
    """The ClientApp's reply with its clear update replaced by the masked one."""
    if UPDATE not in content.array_records or CONFIGS not in content.config_records:
        raise ValueError("secure aggregation: the ClientApp's reply carries no update")
    update, weight = content.array_records[UPDATE], content[CONFIGS][Key.WEIGHT]
    for key in list(content.array_records):  # nothing but the masked update leaves
        del content[key]
    content[MASKED] = masked_update(state, update, float(cast(float, weight)))
    content[CONFIGS] = ConfigRecord({Key.STAGE: Stage.COLLECT})
    return content


def with_update(
    content: RecordDict,
    trained: dict[str, torch.Tensor] | None,
    received: dict[str, torch.Tensor],
    weight: float,
) -> RecordDict:
    """The reply's content plus its clear update for the mod (trained minus received, fp32,
    for each floating-point tensor received) and its weight; a client that did not train
    hands over a zero update of weight 0, which the sum leaves out."""
    names = [n for n, t in received.items() if t.is_floating_point()]
    update = ArrayRecord()
    for name in names:
        if trained is None:
            delta = np.zeros(received[name].shape, np.float32)
        else:
            delta = (trained[name].float() - received[name].float()).numpy()
        update[name] = Array(delta)
    content[UPDATE] = update
    content[CONFIGS] = ConfigRecord({Key.WEIGHT: float(weight if trained is not None else 0)})
    return content
