"""Tokenize domains and pack them into fixed-length blocks, cached on disk.

Documents are joined with the end-of-text token and cut into blocks of `seq_len`; the
tail shorter than a block is dropped. The cache key covers the corpus, the tokenizer and
`seq_len`, so a second run with the same settings reads the blocks instead of tokenizing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from flowerbed.data.blocks import Blocks, token_dtype
from flowerbed.data.documents import Domain

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)
PACKING_VERSION = 1


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps([vocab, tokenizer.eos_token]).encode()).hexdigest()[:16]


def pack_domains(domains: list[Domain], tokenizer: PreTrainedTokenizerBase, seq_len: int) -> Blocks:
    """Tokenize every domain and cut it into blocks; domains too small for a block vanish."""
    dtype = token_dtype(len(tokenizer))
    eos = tokenizer.eos_token_id
    tokens, domain_ids = [], []
    for index, domain in enumerate(domains):
        encoded = tokenizer(domain.documents, add_special_tokens=False)["input_ids"]
        stream = np.fromiter((t for ids in encoded for t in (*ids, eos)), dtype=np.int64)
        n = len(stream) // seq_len
        if n == 0:
            log.warning("domain %s has fewer than %d tokens; skipped", domain.name, seq_len)
            continue
        tokens.append(stream[: n * seq_len].reshape(n, seq_len).astype(dtype))
        domain_ids.append(np.full(n, index, dtype=np.int16))
    names = [d.name for d in domains]
    if not tokens:
        return Blocks(np.zeros((0, seq_len), dtype), np.zeros(0, np.int16), names)
    return Blocks(np.concatenate(tokens), np.concatenate(domain_ids), names)


def cached_blocks(
    cache_dir: Path,
    corpus_key: dict,
    tokenizer: PreTrainedTokenizerBase,
    seq_len: int,
    read_domains: Callable[[], list[Domain]],
) -> Blocks:
    """Blocks from the cache when `corpus_key` was packed before, else pack and store them."""
    key = json.dumps(
        {
            "corpus": corpus_key,
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "seq_len": seq_len,
            "version": PACKING_VERSION,
        },
        sort_keys=True,
    )
    folder = cache_dir / "blocks" / hashlib.sha256(key.encode()).hexdigest()[:20]
    if (folder / "corpus.json").is_file():
        log.info("using packed blocks cached in %s", folder)
        return Blocks.load(folder, "corpus")
    blocks = pack_domains(read_domains(), tokenizer, seq_len)
    staging = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    blocks.save(staging, "corpus")
    (staging / "key.json").write_text(key)
    with contextlib.suppress(OSError):  # another process cached it first; theirs is as good
        staging.rename(folder)
    return Blocks.load(folder, "corpus") if folder.is_dir() else blocks
