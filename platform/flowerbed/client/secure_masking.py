"""The node's update, quantized and masked a tensor at a time: what leaves it in SecAgg+.

Each tensor of the clear update is read in place, quantized to uint32 (its weight factor
applied), masked (its self mask, and a pairwise mask with every other neighbour) and
stored as an Array, and the clear tensor is dropped from its record before the next one
is read: the node holds about one copy of the update at any time, and sends 4 bytes a
parameter.
"""

from __future__ import annotations

from typing import cast

import numpy as np
from flwr.app import Array, ArrayRecord

from flowerbed.client.secure_state import SecAggState
from flowerbed.model.transport import ndarray_view
from flowerbed.secagg.contract import WEIGHT_FACTOR, RoundSetup, layout
from flowerbed.secagg.masks import Mask, apply_masks, pairwise_mask, pairwise_sign, self_mask
from flowerbed.secagg.quantization import quantize, weight_factor


def masked_update(state: SecAggState, update: ArrayRecord, weight: float) -> ArrayRecord:
    """The masked update, emptying `update` (the clear float tensors) as it goes."""
    setup = cast(RoundSetup, state.setup)
    factor = weight_factor(weight, setup.max_weight, setup.bits)
    masks = _masks(state)
    rng = np.random.default_rng()  # stochastic rounding: unbiased, need not be secret
    masked = ArrayRecord()
    for name, _ in layout({n: tuple(a.shape) for n, a in update.items()}):
        if name == WEIGHT_FACTOR:
            vector = np.array([factor], np.uint32)
        else:
            clear = ndarray_view(update[name])
            vector = quantize(clear, factor, setup.clipping_range, setup.bits, rng)
            del clear, update[name]
        apply_masks(vector, masks)
        masked[name] = Array(vector)
    return masked


def _masks(state: SecAggState) -> list[Mask]:
    """The node's self mask and its pairwise masks with every other neighbour (each sent
    it shares: `senders_problem`), with their signs in the sum."""
    pairwise = [
        (pairwise_mask(state.sk1, keys[0]), pairwise_sign(state.node_id, n))
        for n, keys in state.neighbours.items()
        if n != state.node_id
    ]
    return [(self_mask(state.mask_seed), 1), *pairwise]
