"""The `stdlib` corpus: the running interpreter's standard-library sources.

Real text that nobody here wrote and every machine has, grouped into domains by package
area so that partitioning by domain gives clients genuinely different text.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

from flowerbed.data.documents import DataError, Domain

AREAS: dict[str, tuple[str, ...]] = {
    "text": (
        "email",
        "html",
        "xml",
        "json",
        "re",
        "string",
        "textwrap",
        "difflib",
        "csv",
        "codecs",
        "encodings",
        "gettext",
        "locale",
        "tomllib",
        "unicodedata",
        "mailbox",
    ),
    "net": (
        "http",
        "urllib",
        "xmlrpc",
        "socket",
        "socketserver",
        "ssl",
        "smtplib",
        "ftplib",
        "imaplib",
        "poplib",
        "wsgiref",
        "ipaddress",
        "selectors",
        "webbrowser",
    ),
    "concurrency": (
        "asyncio",
        "concurrent",
        "multiprocessing",
        "threading",
        "queue",
        "sched",
        "subprocess",
        "signal",
        "_threading_local",
    ),
    "tooling": (
        "unittest",
        "idlelib",
        "lib2to3",
        "pydoc",
        "pdb",
        "bdb",
        "venv",
        "ensurepip",
        "importlib",
        "pyclbr",
        "tkinter",
        "turtledemo",
        "doctest",
        "trace",
        "profile",
        "cProfile",
        "pstats",
        "timeit",
        "argparse",
        "optparse",
        "logging",
    ),
}
OTHER = "core"
EXCLUDED = ("site-packages", "test", "tests", "__pycache__", "config-3")


def area_of(relative: Path) -> str:
    """The domain a stdlib file belongs to, from its top-level module name."""
    top = relative.parts[0].removesuffix(".py")
    for area, modules in AREAS.items():
        if top in modules:
            return area
    return OTHER


def stdlib_domains(max_chars_per_domain: int, root: Path | None = None) -> list[Domain]:
    """Read the stdlib's .py files (sorted, so every machine with the same Python agrees).

    Whole files are read until a domain holds `max_chars_per_domain` characters: the last
    file may pass the cap (source files are small), and the corpus stays the same on every
    machine with the same Python.
    """
    root = root or Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise DataError(f"the standard library folder {root} does not exist")
    documents: dict[str, list[str]] = {name: [] for name in (*AREAS, OTHER)}
    sizes = dict.fromkeys(documents, 0)
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if any(part.startswith(EXCLUDED) for part in relative.parts[:-1]):
            continue
        area = area_of(relative)
        if sizes[area] >= max_chars_per_domain:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # a handful of stdlib test fixtures are not UTF-8 on purpose
        if text.strip():
            documents[area].append(text)
            sizes[area] += len(text)
    return [Domain(name, docs, f"{root} ({name})") for name, docs in documents.items() if docs]
