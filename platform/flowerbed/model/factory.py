"""Build the shared model: from a size preset, from a saved config, or from pretrained weights."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from flowerbed.config import ModelConfig
from flowerbed.model.presets import PRESETS

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel


def preset_config(
    preset: str, vocab_size: int, eos_token_id: int, tie_embeddings: bool
) -> PretrainedConfig:
    """A Llama config for `preset`, sized to the tokenizer's vocabulary."""
    from transformers import LlamaConfig

    p = PRESETS[preset]
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=p.hidden,
        num_hidden_layers=p.layers,
        num_attention_heads=p.heads,
        num_key_value_heads=p.heads,
        intermediate_size=p.intermediate,
        max_position_embeddings=p.max_positions,
        tie_word_embeddings=tie_embeddings,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=None,  # blocks are packed, never padded; see `clear_padding_index`
        attn_implementation="sdpa",
    )


def build_model(cfg: ModelConfig, vocab_size: int, eos_token_id: int, seed: int) -> PreTrainedModel:
    """The initial global model, in fp32 (autocast handles bf16 compute on GPUs)."""
    if cfg.pretrained:
        return load_pretrained(cfg.pretrained, vocab_size, cfg.tie_embeddings)
    torch.manual_seed(seed)
    return model_from_config(
        preset_config(cfg.preset, vocab_size, eos_token_id, cfg.tie_embeddings)
    )


def model_from_config(config: PretrainedConfig) -> PreTrainedModel:
    """A model with the architecture `config` describes and freshly initialised weights."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def architecture_of(model: PreTrainedModel) -> str:
    """The model's Hugging Face config as JSON: what a client needs to build the same model."""
    import json

    return json.dumps(model.config.to_dict(), default=str)


def model_from_architecture(architecture: str, weights: dict[str, torch.Tensor]) -> PreTrainedModel:
    """The model `architecture_of` described, holding `weights`.

    Built without initialising its weights, which `weights` overwrite every one of (the
    load is strict): random initialisation cost a client 1.3-1.6 s a Message at 125M.
    """
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4
        from transformers.modeling_utils import no_init_weights

    with no_init_weights():
        model = model_from_config(_config_of(architecture))
    model.load_state_dict(weights)
    return model


def base_from_architecture(architecture: str, pretrained: str | None, seed: int) -> PreTrainedModel:
    """The frozen base a client puts adapters on: the pretrained weights the server loaded,
    or the initialisation `build_model` made from the same seed."""
    import json

    if pretrained:
        spec = json.loads(architecture)
        return load_pretrained(
            pretrained, spec["vocab_size"], spec.get("tie_word_embeddings", False)
        )
    torch.manual_seed(seed)
    return model_from_config(_config_of(architecture))


def modeling_module(architecture: str) -> str:
    """The transformers module that holds the model classes of `architecture`."""
    import json

    kind = json.loads(architecture)["model_type"].replace("-", "_")
    return f"transformers.models.{kind}.modeling_{kind}"


def _config_of(architecture: str) -> PretrainedConfig:
    import json

    from transformers import AutoConfig

    spec = json.loads(architecture)
    return AutoConfig.for_model(spec.pop("model_type"), **spec)


def load_pretrained(name_or_path: str, vocab_size: int, tie_embeddings: bool) -> PreTrainedModel:
    """Load weights to fine-tune, untying embeddings unless asked to keep them tied."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch.float32)
    except OSError as err:
        raise FileNotFoundError(
            f"model.pretrained={name_or_path!r} could not be loaded: it is not a model "
            f"directory here and the hub is unreachable or has no such model ({err})"
        ) from None
    if model.get_input_embeddings().num_embeddings < vocab_size:
        raise ValueError(
            f"model.pretrained={name_or_path!r} has {model.get_input_embeddings().num_embeddings} "
            f"token embeddings but the tokenizer has {vocab_size} tokens; use the model's own "
            "tokenizer (data.tokenizer=auto)"
        )
    if not tie_embeddings and model.config.tie_word_embeddings:
        untie_embeddings(model)
    clear_padding_index(model)
    return model


def clear_padding_index(model: PreTrainedModel) -> None:
    """Let every embedding row train: packed blocks have no padding.

    A `padding_idx` (often the end-of-text id) freezes that row under autograd, while
    Opacus's per-sample gradients ignore it, so DP clipping would see gradients the
    update never applies.
    """
    model.get_input_embeddings().padding_idx = None


def untie_embeddings(model: PreTrainedModel) -> None:
    """Give the output layer its own copy of the embedding matrix (Opacus needs it)."""
    output = model.get_output_embeddings()
    output.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
    model.config.tie_word_embeddings = False


def num_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
