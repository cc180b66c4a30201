"""Tokenize domains and pack them into fixed-length blocks, cached on disk.

`stream` packing joins a domain's documents with the end-of-text token and cuts the
stream into blocks of `seq_len`, dropping the tail shorter than a block. `documents`
packing cuts each document (with its end-of-text token) on its own, so no block mixes
two documents: its last block is padded (a tail of fewer than 2 tokens, which holds no
target, is dropped), and each block keeps its document's and user's ids, stable hashes
of where the document came from, so the same document cut again in a later experience
is the same unit. The cache key covers the corpus, the tokenizer, `seq_len` and the
packing, so a second run with the same settings reads the blocks instead of tokenizing.
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

from flowerbed.data.blocks import Blocks, pad_value, token_dtype
from flowerbed.data.documents import Domain

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)
PACKING_VERSION = 2  # 2: token ids stay below the dtype's largest value (padding)


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps([vocab, tokenizer.eos_token]).encode()).hexdigest()[:16]


def pack_domains(
    domains: list[Domain], tokenizer: PreTrainedTokenizerBase, seq_len: int, packing: str = "stream"
) -> Blocks:
    """Tokenize every domain and cut it into blocks; domains too small for a block vanish."""
    if packing == "documents":
        return pack_documents(domains, tokenizer, seq_len)
    dtype = token_dtype(len(tokenizer))
    eos = tokenizer.eos_token_id
    tokens, domain_ids = [], []
    for index, domain in enumerate(domains):
        encoded = _tokenized(domain, index, len(domains), tokenizer)
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


def pack_documents(
    domains: list[Domain], tokenizer: PreTrainedTokenizerBase, seq_len: int
) -> Blocks:
    """Every document in blocks of its own, the last one padded; ids of documents and users."""
    dtype = token_dtype(len(tokenizer))
    eos, pad = tokenizer.eos_token_id, pad_value(dtype)
    tokens, domain_ids, documents, users = [], [], [], []
    for index, domain in enumerate(domains):
        encoded = _tokenized(domain, index, len(domains), tokenizer)
        for d, ids in enumerate(encoded):
            stream = np.asarray([*ids, eos], dtype=np.int64)
            n = len(stream) // seq_len + (len(stream) % seq_len >= 2)
            if n == 0:
                continue
            block = np.full(n * seq_len, pad, dtype=dtype)
            block[: min(len(stream), n * seq_len)] = stream[: n * seq_len]
            tokens.append(block.reshape(n, seq_len))
            domain_ids.append(np.full(n, index, dtype=np.int16))
            documents.append(np.full(n, stable_id(f"document/{domain.name}/{d}")))
            if domain.users is not None:
                users.append(np.full(n, stable_id(f"user/{domain.users[d]}")))
    names = [d.name for d in domains]
    if not tokens:
        empty = np.zeros(0, np.int64)
        return Blocks(np.zeros((0, seq_len), dtype), np.zeros(0, np.int16), names, empty)
    return Blocks(
        np.concatenate(tokens),
        np.concatenate(domain_ids),
        names,
        np.concatenate(documents),
        np.concatenate(users) if len(users) == len(documents) else None,
    )


def _tokenized(
    domain: Domain, index: int, count: int, tokenizer: PreTrainedTokenizerBase
) -> list[list[int]]:
    """A domain's documents as token ids, with a line a person can watch (a large domain
    takes tens of seconds, once: the blocks are cached)."""
    characters = sum(len(text) for text in domain.documents)
    log.info("tokenizing domain %d/%d, %s (%s characters)", index + 1, count, domain.name,
             f"{characters:,}")  # fmt: skip
    return tokenizer(domain.documents, add_special_tokens=False)["input_ids"]


def stable_id(name: str) -> int:
    """A 63-bit id from a name: the same on every machine and in every run."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little") >> 1


def cached_blocks(
    cache_dir: Path,
    corpus_key: dict,
    tokenizer: PreTrainedTokenizerBase,
    seq_len: int,
    read_domains: Callable[[], list[Domain]],
    packing: str = "stream",
) -> Blocks:
    """Blocks from the cache when `corpus_key` was packed before, else pack and store them."""
    settings = {
        "corpus": corpus_key,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "seq_len": seq_len,
        "version": PACKING_VERSION,
    }
    if packing != "stream":  # stream-packed caches keep the key they always had
        settings["packing"] = packing
    key = json.dumps(settings, sort_keys=True)
    folder = cache_dir / "blocks" / hashlib.sha256(key.encode()).hexdigest()[:20]
    if (folder / "corpus.json").is_file():
        log.info("using packed blocks cached in %s", folder)
        return Blocks.load(folder, "corpus")
    blocks = pack_domains(read_domains(), tokenizer, seq_len, packing)
    staging = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    blocks.save(staging, "corpus")
    (staging / "key.json").write_text(key)
    with contextlib.suppress(OSError):  # another process cached it first; theirs is as good
        staging.rename(folder)
    return Blocks.load(folder, "corpus") if folder.is_dir() else blocks
