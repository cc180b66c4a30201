"""The privacy-unit study's corpus: user files with documents of very different lengths.

Python's standard library, as a stand-in for an institution's records: one .jsonl file per
package area (a domain), one record per source file (a document: from a few hundred bytes
to over 100 kB), and as its user the top-level package it belongs to (`asyncio`,
`email`, ...: a person who wrote many documents). Offline and the same on every machine
with the same Python.

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
                if text.strip():
                    name = str(path.relative_to(root))
                    records.append({"text": text, "user": package, "file": name})
        random.Random(area).shuffle(records)  # a capped read takes every package's files
        with (out / f"{area}.jsonl").open("w") as file:
            file.writelines(json.dumps(r) + "\n" for r in records)
        counts[area] = len(records)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--max-files-per-package", type=int, default=40)
    args = parser.parse_args()
    counts = write_corpus(args.out, args.max_files_per_package)
    print(f"wrote {sum(counts.values())} documents in {len(counts)} areas to {args.out}: {counts}")


if __name__ == "__main__":
    main()
