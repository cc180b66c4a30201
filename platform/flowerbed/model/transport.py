"""Weights to and from Flower's ArrayRecord, in a chosen transport dtype.

ArrayRecord goes through numpy, which has no bfloat16: bf16 travels as its int16 bit
pattern and is restored bit-exactly. Whatever travels, the receiver gets fp32 tensors.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from flowerbed.config import TransportDtype


def to_array_record(state: dict[str, torch.Tensor], dtype: TransportDtype) -> ArrayRecord:
    """Encode a state dict; integer buffers travel as they are."""
    arrays = {}
    for name, tensor in state.items():
        tensor = tensor.detach().cpu()
        if tensor.is_floating_point():
            tensor = _encode(tensor, dtype)
        arrays[name] = Array(np.ascontiguousarray(tensor.numpy()))
    return ArrayRecord(arrays)


def from_array_record(record: ArrayRecord, dtype: TransportDtype) -> dict[str, torch.Tensor]:
    """Decode an ArrayRecord made by `to_array_record` back to fp32 tensors."""
    state = {}
    for name, array in record.items():
        tensor = torch.from_numpy(array.numpy().copy())
        if dtype == "bf16" and tensor.dtype == torch.int16:
            tensor = tensor.view(torch.bfloat16)
        state[name] = tensor.float() if tensor.is_floating_point() else tensor
    return state


def _encode(tensor: torch.Tensor, dtype: TransportDtype) -> torch.Tensor:
    if dtype == "fp32":
        return tensor.float()
    if dtype == "fp16":
        return tensor.half()
    return tensor.to(torch.bfloat16).view(torch.int16)


def record_nbytes(record: ArrayRecord) -> int:
    """Bytes of array payload in a record (what one direction of a round ships per client)."""
    return sum(len(array.data) for array in record.values())
