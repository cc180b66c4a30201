"""A public base first: pretrain the shared model on public text before any private round.

Most of what a language model learns first (bytes, words, syntax) is in public text,
which costs no privacy. Pretrained on it, the federation's DP budget is spent only on
what is private to the institutions, and the noise lands on a model that has less left
to learn (simulations/dp_utility/ measures the gap both ways). The base is trained here,
at the coordinator, on the built-in public corpus (`model.public_base=stdlib`), with the
plain trainer and the data path every client uses; it is cached under `data.cache_dir`
by everything it depends on, so a sweep pretrains it once. A base of one's own (a
Hugging Face directory or hub name) is `model.pretrained` instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from flowerbed.client.schedule import Schedule
from flowerbed.client.trainer import LocalTrainer
from flowerbed.config import DataConfig, FlowerbedConfig
from flowerbed.continual.pool import TrainingPool
from flowerbed.data import load_tokenizer
from flowerbed.data.corpus import corpus_source
from flowerbed.data.documents import Domain
from flowerbed.data.packing import cached_blocks
from flowerbed.model import build_model, resolve_device

log = logging.getLogger("flowerbed")
CHUNK = 50
"""Steps between two progress lines."""


def with_public_base(cfg: FlowerbedConfig) -> FlowerbedConfig:
    """`cfg` federating from its public base (trained now, or found in the cache)."""
    model = cfg.model
    if model.public_base == "none":
        return cfg
    data = dataclasses.replace(cfg.data, corpus=model.public_base, packing="stream")
    key, read, _ = corpus_source(data, cfg.seed)
    train = cfg.train  # what of it the base's training reads (not the fine-tuning's lr)
    settings = [model.preset, model.tie_embeddings, model.public_base_steps,
                model.public_base_batch_size, model.public_base_lr, data.seq_len,
                data.tokenizer, cfg.seed, key, cfg.device, train.weight_decay,
                train.min_lr_ratio, train.warmup_steps, train.grad_clip]  # fmt: skip
    digest = hashlib.sha256(json.dumps(settings, default=str).encode()).hexdigest()[:20]
    bases = Path(data.cache_dir).expanduser() / "bases"
    bases.mkdir(mode=0o700, parents=True, exist_ok=True)  # nobody else plants a base here
    folder = bases / digest
    if not (folder / "config.json").is_file():
        _pretrain(cfg, data, key, read, folder)
    else:
        log.info("public base: %s (cached)", folder)
    fine_tuned = dataclasses.replace(model, pretrained=str(folder), public_base="none")
    return dataclasses.replace(cfg, model=fine_tuned)


def _pretrain(
    cfg: FlowerbedConfig,
    data: DataConfig,
    key: dict,
    read: Callable[[], list[Domain]],
    folder: Path,
) -> None:
    """Train the preset on the public corpus's blocks and save it with its tokenizer."""
    model_cfg, device = cfg.model, resolve_device(cfg.device)
    tokenizer = load_tokenizer(data.tokenizer)
    blocks = cached_blocks(Path(data.cache_dir).expanduser(), key, tokenizer, data.seq_len, read)
    model = build_model(model_cfg, len(tokenizer), tokenizer.eos_token_id, cfg.seed)
    train = dataclasses.replace(
        cfg.train,
        local_steps=CHUNK,
        batch_size=model_cfg.public_base_batch_size,
        lr=model_cfg.public_base_lr,
        sequences_per_round=None,
        sync_rounds=0,
    )
    trainer, pool = LocalTrainer(model, train, device), TrainingPool.over(blocks.tokens)
    rng, steps = np.random.default_rng(cfg.seed), model_cfg.public_base_steps
    log.info(
        "public base: %s preset on %d public %s blocks, %d steps", model_cfg.preset,
        len(blocks), data.corpus, steps,
    )  # fmt: skip
    for start in range(0, steps, CHUNK):
        chunk = dataclasses.replace(train, local_steps=min(CHUNK, steps - start))
        trainer.cfg = chunk
        result = trainer.train(pool, Schedule(start, steps), rng)
        log.info("public base: step %d/%d, train loss %.4f", start + chunk.local_steps,
                 steps, result.loss)  # fmt: skip
    staging = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    model.cpu().save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        staging.rename(folder)
    except OSError:  # another run saved the same base first: theirs is the same
        shutil.rmtree(staging)
