"""Where and how a model computes: device choice, autocast, and held-out loss."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import torch

from flowerbed.data.blocks import Blocks, as_ids


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when one is visible, else CPU; `cuda` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but no CUDA device is visible here; use device=auto")
    return torch.device(name)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; plain fp32 on CPU (bf16 matmuls are slow on most CPUs)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def batches(tokens: np.ndarray, batch_size: int, limit: int) -> Iterator[np.ndarray]:
    """Batches of blocks: all of them, or `limit` batches of blocks spread evenly over the
    set. Splits are ordered by domain, so the first blocks alone would measure one domain."""
    count = math.ceil(len(tokens) / batch_size)
    if limit and count > limit:
        picked = np.linspace(0, len(tokens) - 1, limit * batch_size).round().astype(np.int64)
        for i in range(limit):
            yield np.asarray(tokens[picked[i * batch_size : (i + 1) * batch_size]])
        return
    for i in range(count):
        yield np.asarray(tokens[i * batch_size : (i + 1) * batch_size])


def inputs_and_labels(ids: torch.Tensor, padded: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch as a causal LM reads it: padding (`PAD_ID`) is token 0 in (nothing before
    it attends to it) and no target (-100) out."""
    if not padded:
        return ids, ids
    return ids.clamp(min=0), ids.masked_fill(ids < 0, -100)


@torch.no_grad()
def mean_loss(
    model: torch.nn.Module, blocks: Blocks, batch_size: int, limit: int, device: torch.device
) -> float:
    """Token-weighted next-token loss over `blocks` (`limit` batches of them, spread out)."""
    was_training = model.training
    model.eval()
    total, count = torch.zeros((), device=device, dtype=torch.float64), 0
    for batch in batches(blocks.tokens, batch_size, limit):
        ids = torch.from_numpy(as_ids(batch)).to(device)
        inputs, labels = inputs_and_labels(ids, blocks.padded)
        with autocast(device):
            loss = model(input_ids=inputs, labels=labels).loss
        # HF shifts labels: one prediction fewer per block, and none for padding
        n = int((labels[:, 1:] != -100).sum()) if blocks.padded else ids.numel() - ids.shape[0]
        total += loss.double() * n
        count += n
    model.train(was_training)
    return float(total / max(count, 1))
