"""Pick the corpus `data.corpus` names: what identifies it for the cache, and its reader."""

from __future__ import annotations

import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

from flowerbed.config import DataConfig
from flowerbed.data.documents import DataError, Domain


def corpus_source(cfg: DataConfig, seed: int) -> tuple[dict, Callable[[], list[Domain]]]:
    """The corpus's cache key (cheap to compute) and a function that reads its domains."""
    cache_dir = Path(cfg.cache_dir).expanduser()
    if cfg.corpus == "stdlib":
        from flowerbed.data.stdlib import stdlib_domains

        root = sysconfig.get_paths()["stdlib"]
        key = {"stdlib": root, "python": sys.version, "max_chars": cfg.max_chars_per_domain}
        return key, lambda: stdlib_domains(cfg.max_chars_per_domain)
    if cfg.corpus == "synthetic":
        from flowerbed.data.synthetic import synthetic_domains

        params = (cfg.synthetic_domains, cfg.synthetic_docs_per_domain, cfg.synthetic_shift, seed)
        return {"synthetic": params}, lambda: synthetic_domains(*params)
    from flowerbed.data.files import file_domains

    key = {
        "files": [_fingerprint(Path(p).expanduser()) for p in cfg.paths],
        "text_field": cfg.text_field,
        "user_field": cfg.user_field,
        "max_chars": cfg.max_chars_per_domain,
    }
    return key, lambda: file_domains(
        cfg.paths, cfg.text_field, cfg.max_chars_per_domain, cache_dir, cfg.user_field
    )


def _fingerprint(path: Path) -> list:
    """Path, size and modification time of every file under `path`: changes bust the cache."""
    if not path.exists():
        raise DataError(f"data path {path} does not exist")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
