"""The privacy unit: a document or a person, from the packed blocks to the ledger.

Packing by document keeps every block inside one document, with ids that say whose it
is; clients get whole users; DP-SGD draws units at their rate, each at most once a step
with at most `max_blocks_per_unit` blocks; the ledger counts ε per unit, as Google's
dp-accounting does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flowerbed.continual.pool import TrainingPool
from flowerbed.continual.rows import TokenRows
from flowerbed.data import byte_tokenizer
from flowerbed.data.blocks import PAD_ID, Blocks, as_ids
from flowerbed.data.documents import Domain
from flowerbed.data.packing import pack_documents
from flowerbed.data.partition import partition
from flowerbed.privacy.ledger import FILENAME as LEDGER
from flowerbed.privacy.ledger import PrivacyLedger
from flowerbed.run.simulation import simulate
from flowerbed.tracking import RunLayout
from tests.conftest import tiny_config
from tests.test_privacy_accounting import reference


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()


def test_packing_by_document_keeps_every_block_inside_one_document(tokenizer):
    texts = ["a" * 5, "b" * 40, "c" * 15, "d" * 16]  # bytes + eos: 6, 41, 16, 17 tokens
    domain = Domain("notes", texts, "test", users=["ann", "bob", "ann", "cat"])
    blocks = pack_documents([domain], tokenizer, 16)
    # 6 -> 1 padded block; 41 -> 2 full + 1 padded; 16 -> 1 full; 17 -> 1 full (a 1-token
    # tail holds no target and is dropped)
    assert len(blocks) == 6 and blocks.padded
    assert len(set(blocks.documents.tolist())) == 4
    ids = as_ids(blocks.tokens)
    for row in ids:
        real = row[row != PAD_ID]
        assert len(set(real.tolist()) - {tokenizer.eos_token_id}) == 1  # one document's bytes
        assert (row[len(real) :] == PAD_ID).all()  # padding only at the end
    users = dict(zip(blocks.documents.tolist(), blocks.users.tolist(), strict=True))
    assert len(set(users.values())) == 3  # ann's two documents share her id
    again = pack_documents([domain], tokenizer, 16)
    assert again.documents.tolist() == blocks.documents.tolist()  # stable ids


def test_a_partition_gives_each_user_to_one_client():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 30, 500)
    domains = rng.integers(0, 3, 500)
    for scheme in ("iid", "domain", "dirichlet"):
        parts = partition(domains, 4, scheme, 0.5, np.random.default_rng(1), users)
        assert sorted(np.concatenate(parts).tolist()) == list(range(500))
        owners = [{int(u) for u in users[p]} for p in parts]
        assert sum(len(o) for o in owners) == len(set().union(*owners))


def unit_pool(units: list[int], buffer: list[int] | None = None, cap: int = 2) -> TrainingPool:
    """Rows 0..n-1 of one array; `units[i]` is row i's unit; `buffer`: rows kept for replay
    (another array, its units the same ids)."""
    n = len(units)
    tokens = [np.arange(n * 4, dtype=np.uint16).reshape(n, 4)]
    ids = [np.asarray(units)]
    new = TokenRows.whole(tokens, [0], ids)
    if buffer is None:
        return TrainingPool(new, max_blocks_per_unit=cap)
    old = np.arange(len(buffer) * 4, dtype=np.uint16).reshape(-1, 4) + 1000
    arrays, unit_arrays = [*tokens, old], [*ids, np.asarray(buffer)]
    refs = np.stack([np.ones(len(buffer), int), np.arange(len(buffer))], 1)
    return TrainingPool(
        TokenRows.whole(arrays, [0], unit_arrays),
        TokenRows(arrays, refs, unit_arrays),
        0.25,
        cap,
    )


def test_a_step_draws_each_unit_once_with_at_most_its_cap_of_blocks():
    pool = unit_pool([0, 0, 0, 0, 1, 2, 2, 3], cap=2)  # 4 documents
    assert pool.num_records == 4 and pool.accounting_rate(2) == 0.5
    rng = np.random.default_rng(0)
    sizes = []
    for _ in range(400):
        rows, groups = pool.poisson_batch(2, rng)
        if not len(groups):
            sizes.append(0)
            continue
        assert (np.diff(groups) >= 0).all() and np.bincount(groups).max() <= 2
        document = rows[:, 0] // 4  # the row each block came from
        owner = np.asarray([0, 0, 0, 0, 1, 2, 2, 3])[document]
        for g in np.unique(groups):
            assert len(set(owner[groups == g])) == 1  # a group is one document
        assert len(set(owner)) == len(np.unique(groups))  # and a document one group
        sizes.append(len(np.unique(groups)))
    assert np.mean(sizes) == pytest.approx(2, rel=0.1)


def test_a_unit_with_new_and_buffered_blocks_is_one_unit_at_the_new_rate():
    # unit 5 has rows in the new data and in the buffer; unit 9 only in the buffer
    pool = unit_pool([5, 6, 7, 8], buffer=[5, 9, 9], cap=8)
    assert pool.num_records == 5  # 4 new units, 1 replay-only
    q_new, q_replay = pool.poisson_rates(2)
    assert q_new == pytest.approx(0.75 * 2 / 4) and q_replay == pytest.approx(0.25 * 2 / 1)
    rng = np.random.default_rng(0)
    for _ in range(200):
        rows, groups = pool.poisson_batch(2, rng)
        buffered_five = (rows[:, 0] == 1000).nonzero()[0]
        if len(buffered_five):  # unit 5's buffered row comes with its new row, in one group
            five = groups[buffered_five[0]]
            assert sorted(rows[groups == five, 0].tolist()) == [0, 1000]


def write_users(folder: Path, seed: int = 0) -> Path:
    """Two files of notes by 12 people, of very different lengths."""
    rng = np.random.default_rng(seed)
    words = [
        "the",
        "patient",
        "was",
        "seen",
        "for",
        "follow",
        "up",
        "of",
        "pain",
        "and",
        "the",
        "plan",
        "is",
        "unchanged",
    ]
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("clinic", "ward"):
        with (folder / f"{name}.jsonl").open("w") as file:
            for _ in range(120):
                length = int(rng.choice([4, 20, 90]))
                text = " ".join(rng.choice(words, length))
                file.write(json.dumps({"text": text, "user": f"p{rng.integers(12)}"}) + "\n")
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("unit", ["document", "user"])
def test_a_federation_spends_epsilon_per_unit_as_dp_accounting_counts_it(cache_dir, tmp_path, unit):
    cfg = tiny_config(
        cache_dir,
        data={"corpus": "files", "paths": [str(write_users(tmp_path / "text"))],
              "user_field": "user", "partition": "iid"},
        privacy={"mode": "dp_sgd", "target_epsilon": 8.0, "unit": unit,
                 "max_blocks_per_unit": 4},
        train={"batch_size": 4, "local_steps": 4, "lr": 1e-2},
        federation={"rounds": 2},
    )  # fmt: skip
    summary = simulate(cfg, tmp_path / "run")
    assert f"ε 8 per {unit}" in summary["guarantee"]
    layout = RunLayout(tmp_path / "run")
    for client in (0, 1):
        shard = Blocks.load(layout.client_data(client), "train")
        units = shard.units(unit)
        ledger = PrivacyLedger.open(layout.client_state(client) / LEDGER, 1e-5, "prv", unit)
        assert ledger.unit == unit and ledger.steps == 8
        (rate,) = {e.sample_rate for e in ledger.entries}
        assert rate == pytest.approx(4 / len(np.unique(units)))  # a rate over units, not rows
        assert ledger.epsilon == pytest.approx(reference(ledger.history, 1e-5, "pld"), rel=0.01)
        assert 7.5 < ledger.epsilon <= 8.0
    users = [set(Blocks.load(layout.client_data(c), "train").users.tolist()) for c in (0, 1)]
    assert not users[0] & users[1]  # each person's text at one client
