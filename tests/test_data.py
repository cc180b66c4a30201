"""Corpora, tokenizer, packing, partitions, and every kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flowerbed.data import DataError, byte_tokenizer, load_tokenizer, prepare_splits
from flowerbed.data.files import file_domains
from flowerbed.data.packing import cached_blocks, pack_domains
from flowerbed.data.partition import partition
from flowerbed.data.stdlib import stdlib_domains
from flowerbed.data.synthetic import synthetic_domains
from tests.conftest import section


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()


def test_byte_tokenizer_round_trips_any_text_and_reloads_offline(tokenizer, tmp_path: Path):
    from transformers import AutoTokenizer

    text = "héllo wörld 🌼\n\tdef f(): return 1"
    ids = tokenizer(text)["input_ids"]
    assert len(ids) == len(text.encode("utf-8")) and tokenizer.decode(ids) == text
    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text)["input_ids"] == ids and len(again) == 257


def test_unknown_tokenizer_name_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"tokenizer .*could not be loaded"):
        load_tokenizer(str(tmp_path / "no-such-tokenizer"))


def test_stdlib_corpus_has_several_real_domains():
    domains = stdlib_domains(max_chars_per_domain=200_000)
    names = {d.name for d in domains}
    assert {"text", "net", "concurrency", "tooling", "core"} <= names
    assert all(d.num_bytes > 0 for d in domains)
    assert any("import" in doc for doc in domains[0].documents)


def _vocab(domain) -> set[str]:
    return {w.strip(".").lower() for doc in domain.documents for w in doc.split()}


def test_synthetic_shift_controls_how_much_domains_share():
    apart = synthetic_domains(2, 50, shift=1.0)
    together = synthetic_domains(2, 50, shift=0.0)
    assert not _vocab(apart[0]) & _vocab(apart[1])
    overlap = len(_vocab(together[0]) & _vocab(together[1])) / len(_vocab(together[0]))
    assert overlap > 0.8
    assert synthetic_domains(2, 5, 0.5)[0].documents == synthetic_domains(2, 5, 0.5)[0].documents


def test_packing_cuts_documents_joined_by_eos_into_blocks(tokenizer):
    domains = synthetic_domains(2, 20, 1.0)
    blocks = pack_domains(domains, tokenizer, 16)
    assert blocks.tokens.shape[1] == 16 and blocks.tokens.dtype == np.uint16
    assert set(np.unique(blocks.domains)) == {0, 1}
    assert (blocks.tokens == tokenizer.eos_token_id).any()


def test_packed_blocks_are_cached(tokenizer, tmp_path: Path):
    calls = []

    def read():
        calls.append(1)
        return synthetic_domains(2, 20, 1.0)

    first = cached_blocks(tmp_path, {"k": 1}, tokenizer, 16, read)
    second = cached_blocks(tmp_path, {"k": 1}, tokenizer, 16, read)
    assert len(calls) == 1 and np.array_equal(first.tokens, second.tokens)
    cached_blocks(tmp_path, {"k": 2}, tokenizer, 16, read)
    assert len(calls) == 2


@pytest.mark.parametrize("scheme", ["iid", "domain", "dirichlet"])
def test_partitions_give_every_block_to_exactly_one_client(scheme: str):
    domains = np.repeat(np.arange(4), 50)
    parts = partition(domains, 3, scheme, 1.0, np.random.default_rng(0))
    joined = np.concatenate(parts)
    assert len(parts) == 3 and sorted(joined.tolist()) == list(range(200))


def test_domain_partition_gives_clients_different_domains():
    domains = np.repeat(np.arange(4), 50)
    parts = partition(domains, 4, "domain", 1.0, np.random.default_rng(0))
    assert [set(domains[p].tolist()) for p in parts] == [{0}, {1}, {2}, {3}]


def test_dirichlet_with_small_alpha_skews_domains():
    domains = np.repeat(np.arange(4), 500)
    parts = partition(domains, 4, "dirichlet", 0.1, np.random.default_rng(1))
    top_share = [np.bincount(domains[p], minlength=4).max() / len(p) for p in parts]
    assert np.mean(top_share) > 0.6


def test_splits_keep_validation_and_clients_apart(tokenizer, tmp_path: Path):
    cfg = section(
        "data",
        "data=synthetic",
        "data.seq_len=32",
        "data.synthetic_docs_per_domain=40",
        f"data.cache_dir={tmp_path}",
    )
    splits = prepare_splits(cfg, tokenizer, 3, seed=0)
    rows = [
        set(map(bytes, s.tokens))
        for s in [
            splits.validation,
            *[c[0].train for c in splits.clients],
            *[c[0].heldout for c in splits.clients],
        ]
    ]
    assert all(len(r) > 0 for r in rows)
    assert sum(len(r) for r in rows) == len(set().union(*rows))


# --- the user's own files -------------------------------------------------------------


def read(paths: list[Path], tmp_path: Path, field: str = "text"):
    return file_domains([str(p) for p in paths], field, 10**9, tmp_path / "cache")


def test_reads_txt_jsonl_parquet_and_folders(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "notes.txt").write_text("first note\nsecond line\n")
    (tmp_path / "rows.jsonl").write_text(
        "\n".join(json.dumps({"text": f"row {i}"}) for i in range(3))
    )
    pq.write_table(pa.table({"text": ["a parquet row", "another"]}), tmp_path / "table.parquet")
    site = tmp_path / "site"
    (site / "cardiology").mkdir(parents=True)
    (site / "cardiology" / "a.txt").write_text("heart")
    (site / "oncology.jsonl").write_text(json.dumps({"text": "cells"}))
    domains = read(
        [tmp_path / "notes.txt", tmp_path / "rows.jsonl", tmp_path / "table.parquet", site],
        tmp_path,
    )
    by_name = {d.name: d.documents for d in domains}
    assert by_name["notes"] == ["first note\nsecond line\n"]
    assert by_name["rows"] == ["row 0", "row 1", "row 2"]
    assert by_name["table"] == ["a parquet row", "another"]
    assert by_name["cardiology"] == ["heart"] and by_name["oncology"] == ["cells"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.txt", b"", "is empty"),
        ("blob.txt", b"\x7fELF\x00\x00\x01binary", "looks binary"),
        ("latin1.txt", "café".encode("latin-1"), "is not valid UTF-8"),
        ("rows.jsonl", b'{"body": "no text field"}\n', "has no 'text' field"),
        ("broken.jsonl", b'{"text": "unterminated\n', "could not be read as json"),
        ("notes.docx", b"PK", "has suffix '.docx'"),
    ],
)
def test_bad_files_are_refused_with_the_file_named(
    tmp_path: Path, name: str, content: bytes, message: str
):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        read([path], tmp_path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_missing_path_is_named(tmp_path: Path):
    with pytest.raises(DataError, match=r"data path .*missing.txt does not exist"):
        read([tmp_path / "missing.txt"], tmp_path)


def test_a_shard_too_small_for_its_clients_stops_before_training(tokenizer, tmp_path: Path):
    (tmp_path / "tiny.txt").write_text("only a few words here")
    cfg = section(
        "data",
        "data=files",
        f"data.paths=[{tmp_path / 'tiny.txt'}]",
        "data.seq_len=8",
        f"data.cache_dir={tmp_path / 'c'}",
    )
    with pytest.raises(DataError, match="too few for a validation split and 4 clients"):
        prepare_splits(cfg, tokenizer, 4, seed=0)


def test_the_per_domain_cap_holds_inside_one_large_file(tmp_path: Path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "big.txt").write_text("a" * 50_000)  # one domain that is one file
    (site / "rows.jsonl").write_text("\n".join(json.dumps({"text": "b" * 300}) for _ in range(10)))
    domains = {d.name: d for d in file_domains([str(site)], "text", 1_000, tmp_path / "cache")}
    assert sum(len(t) for t in domains["big"].documents) == 1_000
    assert [len(t) for t in domains["rows"].documents] == [300, 300, 300, 100]
