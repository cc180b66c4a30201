"""The `files` corpus: the user's own .txt, .jsonl and .parquet files, or folders of them.

Every file is checked before it is read (exists, not empty, not binary, valid UTF-8, has
the text field), so bad input stops the run with one sentence naming the file. Reading
goes through Hugging Face `datasets`. A folder's subfolders become domains; files lying
directly in a folder are each a domain of their own.

Users (for `privacy.unit=user`): the value of `user_field` in each record of a .jsonl or
.parquet file, or else the domain: the top-level folder, or a file given alone.
"""

from __future__ import annotations

from pathlib import Path

from flowerbed.data.documents import DataError, Domain

SUFFIXES = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
SNIFF_BYTES = 1 << 16


def file_domains(
    paths: list[str],
    text_field: str,
    max_chars_per_domain: int,
    cache_dir: Path,
    user_field: str | None = None,
) -> list[Domain]:
    """Read every listed file or folder into domains, checking each file first.

    A domain stops at `max_chars_per_domain` characters, inside a file too: the document
    that crosses the cap is cut there, and later documents and files are not read.
    """
    grouped: dict[str, list[Path]] = {}
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise DataError(f"data path {path} does not exist")
        for name, files in _group(path).items():
            grouped.setdefault(name, []).extend(files)
    domains = []
    for name, files in grouped.items():
        documents, users = _capped(files, text_field, max_chars_per_domain, cache_dir, user_field)
        source = ", ".join(str(f) for f in files)
        domains.append(Domain(name, documents, source, users or [name] * len(documents)))
    return domains


def _capped(
    files: list[Path], text_field: str, cap: int, cache_dir: Path, user_field: str | None
) -> tuple[list[str], list[str] | None]:
    """The domain's documents (and their users), in file order, up to `cap` characters."""
    documents: list[str] = []
    users: list[str] = []
    room = cap
    for file in files:
        if room <= 0:
            break
        texts, owners = read_texts(file, text_field, cache_dir, user_field)
        for i, text in enumerate(texts):
            documents.append(text[:room])
            if owners is not None:
                users.append(owners[i])
            room -= len(documents[-1])
            if room <= 0:
                break
    return documents, (users if user_field else None)


def _group(path: Path) -> dict[str, list[Path]]:
    if path.is_file():
        return {path.stem: [_checked_suffix(path)]}
    groups: dict[str, list[Path]] = {}
    for child in sorted(path.iterdir()):
        if child.is_dir():
            files = sorted(f for f in child.rglob("*") if f.suffix in SUFFIXES)
            if files:
                groups[child.name] = files
        elif child.suffix in SUFFIXES:
            groups[child.stem] = [child]
    if not groups:
        raise DataError(f"data folder {path} holds no {', '.join(SUFFIXES)} files")
    return groups


def _checked_suffix(path: Path) -> Path:
    if path.suffix not in SUFFIXES:
        raise DataError(
            f"data file {path} has suffix {path.suffix!r}; use one of {', '.join(SUFFIXES)}"
        )
    return path


def check_text_file(path: Path) -> None:
    """Refuse empty, binary and non-UTF-8 files before `datasets` sees them."""
    if path.stat().st_size == 0:
        raise DataError(f"data file {path} is empty")
    if path.suffix == ".parquet":
        return
    raw = path.read_bytes()
    if b"\x00" in raw[:SNIFF_BYTES]:
        raise DataError(f"data file {path} looks binary (it contains NUL bytes); give text")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"data file {path} is not valid UTF-8 (byte {err.start}: {err.reason}); "
            "convert it to UTF-8"
        ) from None


def read_texts(
    path: Path, text_field: str, cache_dir: Path, user_field: str | None = None
) -> tuple[list[str], list[str] | None]:
    """The non-empty texts of one file, read with Hugging Face `datasets`, and each one's
    user (`user_field`'s value, as text) when asked."""
    import datasets

    check_text_file(path)
    builder = SUFFIXES[path.suffix]
    datasets.disable_progress_bars()
    try:
        table = datasets.load_dataset(
            builder,
            data_files=str(path),
            split="train",
            cache_dir=str(cache_dir / "hf-datasets"),
            **({"sample_by": "document"} if builder == "text" else {}),
        )
    except Exception as err:  # datasets raises many types; name the file either way
        raise DataError(f"data file {path} could not be read as {builder}: {err}") from None
    for field, key in ((text_field, "text_field"), (user_field, "user_field")):
        if field is not None and field not in table.column_names:
            raise DataError(
                f"data file {path} has no {field!r} field (it has: "
                f"{', '.join(table.column_names)}); set data.{key}"
            )
    owners = table[user_field] if user_field else [None] * len(table)
    kept = [
        (t, o)
        for t, o in zip(table[text_field], owners, strict=True)
        if isinstance(t, str) and t.strip()
    ]
    if not kept:
        raise DataError(f"data file {path} has no non-empty {text_field!r} text")
    if user_field and any(o is None for _, o in kept):
        raise DataError(f"data file {path} has records without a {user_field!r} value")
    texts = [t for t, _ in kept]
    return texts, ([str(o) for _, o in kept] if user_field else None)
