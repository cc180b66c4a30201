"""The client's side of secure aggregation: Flower's SecAgg+ mod, on the Messages of a
secure round.

The mod (`flwr.client.mod.secaggplus_mod`) answers the key set-up, key exchange and
unmask stages itself and calls the ClientApp only for the collect stage; there it takes
the update from the reply's FitRes layout, quantizes and masks it, and clears the reply's
arrays, so only the masked vector and the reply's metrics leave the node. Its protocol
state lives in the node's Context, which the SuperNode keeps between the Messages of a
run. Messages of a round without secure aggregation pass through untouched.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS


def is_secure(message: Message) -> bool:
    """Whether a Message belongs to a secure round's protocol."""
    return RECORD_KEY_CONFIGS in message.content.config_records


def secure_aggregation_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Flower's `secaggplus_mod` for the train Messages of a secure round; any other
    Message goes straight to the ClientApp."""
    if msg.metadata.message_type == MessageType.TRAIN and is_secure(msg):
        from flwr.client.mod import secaggplus_mod

        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


def with_masked_update(
    content: RecordDict,
    trained: dict[str, torch.Tensor] | None,
    received: dict[str, torch.Tensor],
    weight: float,
) -> RecordDict:
    """The reply's content plus its update (trained minus received, fp32, in the received
    weights' order) in the FitRes layout the mod masks; a client that did not train
    sends a zero update of weight 0, which the sum leaves out."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.compat.common import recorddict_compat as compat

    names = [n for n, t in received.items() if t.is_floating_point()]
    if trained is None:
        update, weight = [np.zeros(received[n].shape, np.float32) for n in names], 0
    else:
        update = [(trained[n].float() - received[n].float()).numpy() for n in names]
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(update), int(weight), {})
    out = compat.fitres_to_recorddict(fitres, keep_input=True)
    for key, record in content.items():
        out[key] = record
    return out
