"""Pick the corpus `data.corpus` names: what identifies it for the cache, and its reader."""

from __future__ import annotations

import sys
import sysconfig
from collections.abc import Callable
from functools import partial
from pathlib import Path

from flowerbed.config import DataConfig
from flowerbed.data.documents import DataError, Domain


def corpus_source(cfg: DataConfig, seed: int) -> tuple[dict, Callable[[], list[Domain]], Path]:
    """The corpus's cache key (cheap to compute), a function that reads its domains, and
    the cache folder for it: the user's own files are cached in a folder only its owner
    reads (`private/`, 0700); the built-in public corpora where anyone may share them."""
    cache_dir = Path(cfg.cache_dir).expanduser()
    if cfg.corpus == "stdlib":
        from flowerbed.data.stdlib import stdlib_domains

        root = sysconfig.get_paths()["stdlib"]
        key = {"stdlib": root, "python": sys.version, "max_chars": cfg.max_chars_per_domain}
        return key, lambda: stdlib_domains(cfg.max_chars_per_domain), cache_dir
    if cfg.corpus == "synthetic":
        from flowerbed.data.synthetic import synthetic_domains

        params = (cfg.synthetic_domains, cfg.synthetic_docs_per_domain, cfg.synthetic_shift, seed)
        return {"synthetic": params}, lambda: synthetic_domains(*params), cache_dir
    from flowerbed.data.files import file_domains

    key = {
        "files": [_fingerprint(Path(p).expanduser()) for p in cfg.paths],
        "text_field": cfg.text_field,
        "user_field": cfg.user_field,
        "max_chars": cfg.max_chars_per_domain,
    }
    private = cache_dir / "private"
    private.mkdir(mode=0o700, parents=True, exist_ok=True)
    private.chmod(0o700)
    read = partial(
        file_domains, cfg.paths, cfg.text_field, cfg.max_chars_per_domain, private, cfg.user_field
    )
    return key, read, private


def _fingerprint(path: Path) -> list:
    """Path, size and modification time of every file under `path`: changes bust the cache."""
    if not path.exists():
        raise DataError(f"data path {path} does not exist")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
