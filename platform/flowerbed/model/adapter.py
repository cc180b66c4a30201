"""LoRA adapters (peft) on a frozen base: what travels, the base every client must share,
and what a user keeps.

Under `adapter=lora` the global model is a base plus adapters, and only the adapters
train, travel and are aggregated: `shared_state` is the one place that decides which
tensors leave a process. Each client rebuilds the base itself (from the same pretrained
directory, or the preset's seeded initialisation) and checks it against the server's by
a content hash before it trains, since adapters trained on another base mean nothing.
"""

from __future__ import annotations

import copy
import hashlib
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from flowerbed.config import AdapterConfig, ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class BaseModelMismatch(ValueError):
    """A client's base model is not the one the server's adapters were trained on."""


def add_adapter(model: PreTrainedModel, cfg: AdapterConfig) -> torch.nn.Module:
    """The model with LoRA adapters on `cfg.target_modules` and its base frozen (or as is)."""
    if not cfg.enabled:
        return model
    from peft import LoraConfig, get_peft_model

    # peft asks transformers 5 a deprecated question about checkpointing: not the user's news.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)

    lora = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as err:
        raise ConfigError(
            f"adapter.target_modules={list(cfg.target_modules)} does not fit this model: "
            f"{err}; name its linear layers (the presets': q_proj, k_proj, v_proj, o_proj, "
            "gate_proj, up_proj, down_proj)"
        ) from None


def is_adapted(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config")


def shared_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What travels and is aggregated: the adapters' tensors under LoRA, else every weight."""
    if not is_adapted(model):
        return model.state_dict()
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def load_shared_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load what `shared_state` gave; under LoRA exactly the adapters' tensors, no more."""
    if not is_adapted(model):
        model.load_state_dict(state)
        return
    expected = set(shared_state(model))
    if set(state) != expected:
        unknown = sorted(set(state) - expected)[:3]
        missing = sorted(expected - set(state))[:3]
        raise ValueError(
            f"the adapter weights do not fit this model's adapters (unexpected {unknown}, "
            f"missing {missing}): server and client must use the same adapter settings"
        )
    model.load_state_dict(state, strict=False)


def base_fingerprint(model: torch.nn.Module) -> str:
    """A content hash of a model's weights (names, shapes, fp32 values): its identity."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def check_base(base: torch.nn.Module, expected: str, source: str) -> None:
    """Refuse to train adapters on a base that is not the server's."""
    found = base_fingerprint(base)
    if found != expected:
        raise BaseModelMismatch(
            f"this client's base model ({source}) has hash {found} but the server's has "
            f"{expected}: give every client the same base model as the server"
        )


def save_adapter_outputs(model: torch.nn.Module, adapter_dir: Path, merged_dir: Path) -> None:
    """The adapter in PEFT's format (`PeftModel.from_pretrained`) and the merged model in
    Hugging Face format; the global model itself is left as it is."""
    model.save_pretrained(adapter_dir)
    merged = copy.deepcopy(model).merge_and_unload()
    merged.save_pretrained(merged_dir)
