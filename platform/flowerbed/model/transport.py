"""Weights to and from Flower's ArrayRecord, in a chosen transport dtype.

ArrayRecord goes through numpy, which has no bfloat16: bf16 travels as its int16 bit
pattern and is restored bit-exactly. Whatever travels, the receiver gets fp32 tensors.

An `Array` holds its tensor as the bytes of a `.npy` file. Flower's `Array.numpy()` copies
them twice (0.6 s for 134M fp16 parameters on 2 cores); here they are read in place
(`read_only`), and `from_array_record` makes the one copy (or conversion) it needs.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from flowerbed.config import TransportDtype

_NPY_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


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
    """Decode an ArrayRecord made by `to_array_record` into fp32 tensors of its own."""
    return {
        name: tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor.clone()
        for name, tensor in read_only(record, dtype).items()
    }


def read_only(record: ArrayRecord, dtype: TransportDtype) -> dict[str, torch.Tensor]:
    """The record's tensors in their transport dtype, over the record's own bytes: no copy.

    Never write to them (the bytes are immutable); copy or convert what must change.
    """
    state = {}
    for name, array in record.items():
        tensor = _tensor_view(array)
        if dtype == "bf16" and tensor.dtype == torch.int16:
            tensor = tensor.view(torch.bfloat16)
        state[name] = tensor
    return state


def _tensor_view(array: Array) -> torch.Tensor:
    """A read-only tensor over an Array's `.npy` bytes (a copy when unusual)."""
    ndarray = ndarray_view(array)
    if not ndarray.flags.c_contiguous:
        return torch.from_numpy(ndarray.copy())
    with warnings.catch_warnings():  # read-only by design: see `read_only`
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(ndarray)


def ndarray_view(array: Array) -> np.ndarray:
    """A read-only numpy array over an Array's `.npy` bytes (`Array.numpy()` when unusual)."""
    stream = io.BytesIO(array.data)
    reader = _NPY_HEADER_READERS.get(np.lib.format.read_magic(stream))
    shape, fortran_order, dtype = reader(stream) if reader else ((), True, None)
    if fortran_order or dtype.hasobject:
        return array.numpy()
    return np.frombuffer(array.data, dtype, math.prod(shape), stream.tell()).reshape(shape)


def _encode(tensor: torch.Tensor, dtype: TransportDtype) -> torch.Tensor:
    if dtype == "fp32":
        return tensor.float()
    if dtype == "fp16":
        return tensor.half()
    return tensor.to(torch.bfloat16).view(torch.int16)


def record_nbytes(record: ArrayRecord) -> int:
    """Bytes of array payload in a record (what one direction of a round ships per client)."""
    return sum(len(array.data) for array in record.values())
