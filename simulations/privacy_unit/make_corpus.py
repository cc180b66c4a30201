"""The privacy-unit study's corpus: user files with documents of very different lengths.

Python's standard library, as a stand-in for an institution's records: one .jsonl file per
package area (a domain); each source file is a user (a person with a record of many
notes), and each of its top-level blocks (the module's header, every top-level `def` and
`class`) is one of that user's documents, from a line to thousands of lines. Offline and
the same on every machine with the same Python.

    uv run python simulations/privacy_unit/make_corpus.py runs/privacy_unit_corpus
"""

from __future__ import annotations

import argparse
import json
import random
import sysconfig
from pathlib import Path

from flowerbed.data.stdlib import AREAS


def write_corpus(out: Path, max_files_per_package: int) -> dict[str, int]:
    """One `<area>.jsonl` per package area under `out`; returns records per area."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for area, packages in AREAS.items():
        records = []
        for package in packages:
            files = [root / f"{package}.py"] if (root / f"{package}.py").is_file() else []
            files += sorted((root / package).rglob("*.py")) if (root / package).is_dir() else []
            for path in files[:max_files_per_package]:
                text = path.read_text(encoding="utf-8", errors="replace")
                user = str(path.relative_to(root))
                records += [{"text": t, "user": user} for t in top_level_blocks(text)]
        random.Random(area).shuffle(records)  # a capped read takes every package's files
        with (out / f"{area}.jsonl").open("w") as file:
            file.writelines(json.dumps(r) + "\n" for r in records)
        counts[area] = len(records)
    return counts


def top_level_blocks(source: str) -> list[str]:
    """A module cut before every line that starts a top-level `def`, `class` or decorator."""
    blocks, current = [], []
    for line in source.splitlines(keepends=True):
        starts = line.startswith(("def ", "class ", "async def ", "@"))
        if starts and current and not current[-1].startswith("@"):
            blocks.append("".join(current))
            current = []
        current.append(line)
    blocks.append("".join(current))
    return [b for b in blocks if b.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--max-files-per-package", type=int, default=40)
    args = parser.parse_args()
    counts = write_corpus(args.out, args.max_files_per_package)
    print(f"wrote {sum(counts.values())} documents in {len(counts)} areas to {args.out}: {counts}")


if __name__ == "__main__":
    main()
