"""An institution's own files as its next experience, cut to the run's settings.

The sequence length, packing, text and user fields and per-domain cap come from the
run's config.yaml, and the tokenizer from the run's folder, so a shard cannot silently
disagree with the federation; packed by document, its blocks keep their document and
user ids (the privacy units). Each experience records what it was cut with
(`shard.json`); a new one whose tokenizer, sequence length or packing differs from the
experiences already there is refused.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

from flowerbed.atomic import make_private
from flowerbed.config import DataConfig
from flowerbed.continual.stream import experience_dir, scan_experiences
from flowerbed.data import ClientShard, DataError
from flowerbed.data.packing import tokenizer_fingerprint
from flowerbed.data.prepare import institution_shard

RECORD = "shard.json"


def add_experience(
    data_dir: Path, paths: list[str], run_data: DataConfig, tokenizer_dir: Path
) -> tuple[Path, ClientShard]:
    """Cut `paths` into the next experience folder under `data_dir`; return it and the shard.

    The text is read and packed through a private temporary cache that is removed after:
    an institution's records leave no copy beside its data directory (which is made 0700
    before anything is written in it).
    """
    from transformers import AutoTokenizer

    if not tokenizer_dir.is_dir():
        raise FileNotFoundError(
            f"the run's tokenizer {tokenizer_dir} does not exist: copy the coordinator's "
            "data/tokenizer/ beside config.yaml, or name it with --tokenizer"
        )
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    cut = {
        "seq_len": run_data.seq_len,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "packing": run_data.packing,  # by document: the blocks keep their unit ids
    }
    existing = scan_experiences(data_dir) if data_dir.is_dir() else []
    if any(e.folder == data_dir for e in existing):
        raise FileExistsError(
            f"{data_dir} holds one shard directly; experiences go in sub-folders: "
            "use an empty data directory"
        )
    for experience in existing:
        _check_same_cut(experience.folder, cut)
    with tempfile.TemporaryDirectory(prefix="flowerbed-shard-") as cache:  # 0700
        cfg = dataclasses.replace(run_data, corpus="files", paths=list(paths), cache_dir=cache)
        shard = institution_shard(cfg, tokenizer)
    make_private(data_dir)  # reversible token blocks: as private as the text, from the start
    folder = experience_dir(data_dir, len(existing))
    folder.mkdir(mode=0o700)
    (folder / RECORD).write_text(json.dumps(cut))
    shard.save(folder)  # held-out last: the folder counts once heldout.json exists
    make_private(data_dir)
    return folder, shard


def _check_same_cut(folder: Path, cut: dict) -> None:
    record = folder / RECORD
    before = json.loads(record.read_text()) if record.is_file() else {}
    before.setdefault("seq_len", ClientShard.load(folder).train.seq_len)
    for key, value in cut.items():
        if key in before and before[key] != value:
            raise DataError(
                f"{folder} was cut with {key} {before[key]}, but the run's config.yaml and "
                f"tokenizer give {value}: an institution's experiences must match the "
                "federation's; cut them all with this run's config.yaml"
            )
