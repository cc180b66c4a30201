"""Tokenizers: a built-in byte-level one that needs no files, or a Hugging Face one.

The byte tokenizer is a real `tokenizers` BPE with the 256 byte symbols and no merges, so
it is saved and reloaded with `AutoTokenizer` like any other, offline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

EOS_TOKEN = "<|endoftext|>"


def byte_tokenizer() -> PreTrainedTokenizerBase:
    """A byte-level tokenizer: 256 byte symbols plus one end-of-text token (vocab 257)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab[EOS_TOKEN] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, pad_token=EOS_TOKEN
    )


def load_tokenizer(spec: str, pretrained: str | None = None) -> PreTrainedTokenizerBase:
    """Resolve `data.tokenizer`: `byte`, a path or hub name, or `auto`.

    `auto` takes the pretrained model's tokenizer when fine-tuning, else the byte one.
    """
    if spec == "auto":
        spec = pretrained or "byte"
    if spec == "byte":
        return byte_tokenizer()
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(spec)
    except OSError as err:
        raise FileNotFoundError(
            f"tokenizer {spec!r} could not be loaded (not a local tokenizer directory, and "
            f"the hub is unreachable or has no such name): {err}"
        ) from None
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {spec!r} has no end-of-text token to separate documents")
    return tokenizer
