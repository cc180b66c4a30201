"""Every privacy and security promise, played by the party that would break it.

Each test runs an attack the way its attacker would, with the project's own code and
what that party can see: a curious coordinator (it sees every reply, chooses the
instructions, the sample and the SecAgg+ parameters), a hostile institution (it chooses
its own reply), a local user on a node's machine (it reads what file modes allow) and a
careless operator (two processes on one state directory, a restored backup). The threat
model these tests stand for is in docs/privacy.md ("Who can learn what").
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    generate_shared_key,
)
from flwr.supercore.primitives.asymmetric import (
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)
from safetensors.torch import load_file
from transformers import AutoTokenizer

from flowerbed.client import state_dir as state_dir_module
from flowerbed.client.faults import misbehave
from flowerbed.client.local_round import evaluate_round, train_round
from flowerbed.client.node import Node
from flowerbed.client.randomness import SecretReservoir
from flowerbed.client.secure import secure_aggregation_mod
from flowerbed.client.secure_masking import masked_update
from flowerbed.client.secure_state import SecAggState
from flowerbed.client.state_dir import StateDirError, own_state_dir
from flowerbed.config import ConfigError, FlowerbedConfig, compose_config, load_config
from flowerbed.config.node_policy import accepting_all, policy_from_node_config
from flowerbed.config.robustness import FaultsConfig
from flowerbed.keystream import KeyStream
from flowerbed.model.factory import build_model
from flowerbed.model.transport import ndarray_view, to_array_record
from flowerbed.privacy.ledger import FILENAME as LEDGER
from flowerbed.privacy.secret import FILENAME as SECRET
from flowerbed.privacy.secret import NodeSecret
from flowerbed.protocol import TrainReply
from flowerbed.run.prepare import prepare_run
from flowerbed.run.simulation import simulate
from flowerbed.secagg.contract import MASKED, WEIGHT_FACTOR, Key, RoundSetup, Stage, layout
from flowerbed.secagg.masks import (
    PAIRWISE_MASK,
    SELF_MASK,
    apply_masks,
    mask_key,
    pairwise_mask,
    pairwise_sign,
    self_mask,
)
from flowerbed.secagg.quantization import dequantize_mean, quantize
from flowerbed.server.instructions import evaluate_instructions, model_spec, train_instructions
from flowerbed.server.outer import outer_optimizer
from flowerbed.server.pipeline import Aggregate, AggregationPipeline
from flowerbed.server.secure_masks import (
    SecureAggregationFailed,
    forward,
    mean_update,
)
from flowerbed.tracking import RunLayout
from tests.conftest import tiny_config
from tests.secure_round import (
    LocalGrid,
    as_coordinator,
    federation,
    node_of,
    secagg,
    secure_round,
    stage,
    stage_message,
)

ROOT = Path(__file__).resolve().parents[1]
DP = {"mode": "dp_sgd", "target_epsilon": 8.0, "delta": 1e-5}
TRAIN = {"batch_size": 16, "local_steps": 3, "lr": 1e-2, "warmup_steps": 0}


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory, cache_dir) -> Path:
    """A prepared tiny DP-SGD run (no round trained yet): the nodes' shards and config."""
    cfg = tiny_config(cache_dir, privacy=DP, train=TRAIN, continual={"mode": "off"})
    run_dir = tmp_path_factory.mktemp("attacks") / "run"
    prepare_run(cfg, RunLayout(run_dir))
    return run_dir


@pytest.fixture
def run_copy(dp_run, tmp_path) -> Path:
    """A fresh copy of the prepared run for one test (its own state directories)."""
    target = tmp_path / "run"
    shutil.copytree(dp_run, target)
    return target


def model_and_job(run_dir: Path, round_: int = 1, **privacy) -> tuple:
    """The global model as the coordinator builds it, and its train Message's instructions."""
    layout, cfg = RunLayout(run_dir), load_config(run_dir / "config.yaml")
    cfg = dataclasses.replace(cfg, privacy=dataclasses.replace(cfg.privacy, **privacy))
    tokenizer = AutoTokenizer.from_pretrained(layout.tokenizer)
    model = build_model(cfg.model, len(tokenizer), tokenizer.eos_token_id, cfg.seed)
    return model, train_instructions(cfg, model_spec(cfg, model), round_), cfg


def node_at(run_dir: Path, policy=None, deployed: bool = True, partition: int = 0) -> Node:
    layout = RunLayout(run_dir)
    return Node(
        partition,
        layout.client_data(partition),
        layout.client_state(partition),
        "cpu",
        1,
        policy or accepting_all(),
        deployed,
    )


def update_of(trained: dict[str, torch.Tensor], sent: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([(trained[k].float() - sent[k].float()).flatten() for k in sent])


# --- the curious coordinator against the noise (finding 1: 32 bits of secret) ---


def test_noise_keyed_by_a_secret_cannot_be_found_by_searching_torch_seeds(run_copy):
    """The coordinator holds an update and searches torch generator seeds for the noise that
    correlates with it. Before, the noise came from a 63-bit seed of which torch's CPU
    generator kept 32 bits: the true seed stood out (z = 18). The reduced search space here
    holds the seed the old derivation gives for this release, and 255 others."""
    model, job, _ = model_and_job(run_copy)
    sent = {k: v.clone() for k, v in model.state_dict().items()}
    reply, trained = train_round(job, sent, node_at(run_copy))
    assert trained is not None and reply.refused is None
    update = update_of(trained, sent)[:4096]
    secret = (RunLayout(run_copy).client_state(0) / SECRET).read_bytes()
    old = hmac.new(secret, b"noise/0/1", hashlib.sha256).digest()  # the old key, release 0
    candidates = [int.from_bytes(old[:8], "little") >> 1, *range(1, 256)]
    size = sum(p.numel() for p in model.parameters())
    scores = []
    for seed in candidates:
        noise = torch.empty(size).normal_(generator=torch.Generator().manual_seed(seed))
        guess = noise[: len(update)]
        scores.append(float(torch.dot(-update, guess) / (update.norm() * guess.norm())) * 64)
    assert max(scores) < 5.0, scores[:3]  # z-scores of noise that is not the update's


def test_every_bit_of_the_noise_key_matters_not_only_the_low_32(tmp_path):
    """torch seeds s and s xor 2^40 gave the same noise; keys that differ in any one bit
    give unrelated noise."""
    from flowerbed.privacy.secret_noise import KeyedGaussian

    key = bytes(range(32))
    base = KeyedGaussian(key).fill_(torch.empty(1000), 1.0)
    for bit in (0, 31, 40, 63, 64, 200, 255):
        flipped = bytearray(key)
        flipped[bit // 8] ^= 1 << (bit % 8)
        other = KeyedGaussian(bytes(flipped)).fill_(torch.empty(1000), 1.0)
        assert abs(float(torch.corrcoef(torch.stack([base, other]))[0, 1])) < 0.15, bit


def seeded_words(state: torch.Tensor) -> np.ndarray:
    """Which of a generator state's words follow MT19937's seeding rule from the one
    before (word[j] = 1812433253 * (w ^ w >> 30) + j): all do for a state from a seed."""
    words = state.numpy()[24 : 24 + 624 * 8].view("<u8").astype(np.uint64)
    before = words[:-1]
    rule = np.uint64(1812433253) * (before ^ (before >> np.uint64(30)))
    rule = (rule + np.arange(1, 624, dtype=np.uint64)) & np.uint64(0xFFFFFFFF)
    return rule == words[1:]


def test_the_replay_reservoir_is_drawn_from_a_state_no_32_bit_seed_makes(tmp_path):
    """torch.manual_seed fills the Mersenne Twister from 32 bits by a fixed rule; the
    reservoir's state comes from the node's keystream, all 624 words of it."""
    assert seeded_words(torch.Generator().manual_seed(12345).get_state()).all()
    keyed = SecretReservoir(NodeSecret.open(tmp_path)).torch_state(1)
    assert not seeded_words(keyed).any()


def test_user_level_noise_at_the_server_depends_on_its_whole_256_bit_key(monkeypatch, cache_dir):
    """Before, the server's noise came from 8 bytes of os.urandom folded by torch to 32 bits:
    whoever holds the released model could search them. Now two keys that differ only in
    their last byte give different noise."""
    from flowerbed.server.combiners import ClippedNoisedMean

    cfg = tiny_config(cache_dir, privacy={"mode": "user_level", "noise_multiplier": 1.0})
    combiner = ClippedNoisedMean(cfg.combiner, cfg)
    draws = []
    for last in (0, 1):
        monkeypatch.setattr(os, "urandom", lambda n, last=last: bytes(n - 1) + bytes([last]))
        draws.append(combiner.noise(1)(torch.Size([64]), 1.0))
    assert not torch.equal(draws[0], draws[1])


# --- a careless operator: two processes, one state directory; a restored backup (finding 2) ---

CLIENT_ROUND = """
import sys
from pathlib import Path
from safetensors.torch import save_file
from tests.test_attacks import model_and_job, node_at
from flowerbed.client.local_round import train_round

run_dir, out = Path(sys.argv[1]), sys.argv[2]
model, job, _ = model_and_job(run_dir)
sent = {k: v.clone() for k, v in model.state_dict().items()}
reply, trained = train_round(job, sent, node_at(run_dir))
save_file({k: v.contiguous() for k, v in trained.items()}, out)
"""


def client_round_process(run_dir: Path, out: Path) -> subprocess.Popen:
    command = [sys.executable, "-c", CLIENT_ROUND, str(run_dir), str(out)]
    return subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)


def ledger_entries(run_dir: Path) -> list[dict]:
    path = RunLayout(run_dir).client_state(0) / LEDGER
    return json.loads(path.read_text())["entries"]


@pytest.mark.slow
def test_two_processes_on_one_state_dir_never_send_the_same_noise_and_count_both(run_copy):
    """Two SuperNodes pointed at one state-dir, both asked for round 1. Before, they sent
    bit-identical updates (same sample, same noise) and the ledger held 1 entry."""
    outs = [run_copy / f"update-{i}.safetensors" for i in (0, 1)]
    processes = [client_round_process(run_copy, out) for out in outs]
    for process in processes:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-2000:]
    first, second = (load_file(out) for out in outs)
    assert any(not torch.equal(first[k], second[k]) for k in first)
    entries = ledger_entries(run_copy)
    assert len(entries) == 2 and entries[0]["nonce"] != entries[1]["nonce"]
    assert entries[1]["epsilon"] > entries[0]["epsilon"]


def test_a_restored_backup_draws_fresh_noise_and_its_lost_releases_are_counted(run_copy):
    """The operator backs up the state directory, the node releases round 1, the backup is
    restored and the coordinator asks for round 1 again. Before, the node drew the same
    noise again (keyed by ledger length and round: subtract the two releases and the noise
    is gone) and its ledger counted one release."""
    node = node_at(run_copy)
    state = node.state_dir
    with own_state_dir(state, node.data_dir, True, node.ledger_mirror()):  # it ran before
        NodeSecret.open(state)
    backup = run_copy.parent / "backup"
    shutil.copytree(state, backup)
    model, job, _ = model_and_job(run_copy)
    sent = {k: v.clone() for k, v in model.state_dict().items()}
    _, first = train_round(job, sent, node)
    shutil.rmtree(state)
    shutil.copytree(backup, state)  # the restore: the ledger is back to no release
    _, second = train_round(job, sent, node)
    assert first is not None and second is not None
    assert not torch.equal(update_of(first, sent), update_of(second, sent))
    assert len(ledger_entries(run_copy)) == 2  # the mirror outside the state dir remembered


def test_a_second_process_waits_for_the_state_dir_then_refuses_naming_the_holder(
    run_copy, monkeypatch
):
    node = node_at(run_copy)
    monkeypatch.setattr(state_dir_module, "LOCK_WAIT", 0.5)
    model, job, _ = model_and_job(run_copy)
    errors: list[Exception] = []
    with own_state_dir(node.state_dir, node.data_dir, True, node.ledger_mirror()):

        def other() -> None:
            try:
                train_round(job, model.state_dict(), node)
            except StateDirError as err:
                errors.append(err)

        thread = threading.Thread(target=other)
        thread.start()
        thread.join(timeout=120)
    assert len(errors) == 1 and f"held by pid {os.getpid()}" in str(errors[0])
    assert not (node.state_dir / LEDGER).exists()  # nothing was drawn or counted


def test_a_node_pointed_at_another_nodes_state_dir_refuses(run_copy):
    model, job, _ = model_and_job(run_copy)
    train_round(job, model.state_dict(), node_at(run_copy, partition=0))
    intruder = dataclasses.replace(
        node_at(run_copy, partition=1), state_dir=RunLayout(run_copy).client_state(0)
    )
    with pytest.raises(StateDirError, match="belongs to the node whose data is"):
        train_round(job, model.state_dict(), intruder)
    assert len(ledger_entries(run_copy)) == 1


# --- the coordinator against the node's policy (finding 3: it failed open) ---


def test_a_capped_node_refuses_a_round_without_dp_and_withholds_its_exact_metrics(run_copy):
    """`max-epsilon=4 release=minimal`, no require-dp: the node trained a DP round, then the
    server sent privacy=off. Before, it trained without DP and sent its exact loss and
    count, and an evaluate Message got its exact held-out loss."""
    capped = policy_from_node_config({"max-epsilon": 4, "release": "minimal"})
    model, job, _ = model_and_job(run_copy, target_epsilon=4.0)
    reply, trained = train_round(job, model.state_dict(), node_at(run_copy, capped))
    assert reply.refused is None and trained is not None and reply.train_loss is None
    off = dataclasses.replace(job, privacy=dataclasses.replace(job.privacy, mode="off"))
    reply, trained = train_round(off, model.state_dict(), node_at(run_copy, capped))
    assert trained is None and "requires DP-SGD at the node" in (reply.refused or "")
    assert reply.train_loss is None and reply.num_examples == 0
    evaluate = dataclasses.replace(off.evaluation(1))
    answer = evaluate_round(evaluate, model.state_dict(), node_at(run_copy, capped))
    assert answer.heldout_loss is None and "requires DP-SGD" in (answer.refused or "")


def test_a_node_that_said_nothing_refuses_no_dp_and_a_delta_it_never_accepted(run_copy):
    model, job, _ = model_and_job(run_copy)
    silent = policy_from_node_config({})  # a deployed node with no policy written
    off = dataclasses.replace(job, privacy=dataclasses.replace(job.privacy, mode="off"))
    reply, trained = train_round(off, model.state_dict(), node_at(run_copy, silent))
    assert trained is None and "requires DP-SGD" in (reply.refused or "")
    loose = policy_from_node_config({"require-dp": "true", "max-epsilon": 8})
    half = dataclasses.replace(job, privacy=dataclasses.replace(job.privacy, delta=0.5))
    reply, trained = train_round(half, model.state_dict(), node_at(run_copy, loose))
    assert trained is None and "accepts δ ≤ 1e-05 (max-delta)" in (reply.refused or "")


def test_a_value_the_node_does_not_understand_is_a_refusal_not_a_traceback(run_copy, monkeypatch):
    from flwr.app import Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from flowerbed.client.app import make_client_app
    from flowerbed.model.transport import to_array_record
    from flowerbed.protocol import ARRAYS, CONFIG, TrainReply

    model, job, _ = model_and_job(run_copy)
    unresolved = dataclasses.replace(job, privacy=dataclasses.replace(job.privacy, unit="auto"))
    capped = policy_from_node_config({"max-epsilon": 8, "privacy-unit": "document"})
    reply, trained = train_round(unresolved, model.state_dict(), node_at(run_copy, capped))
    assert trained is None and "privacy.unit='auto'" in (reply.refused or "")
    garbled = job.to_record()
    garbled["privacy.mode"] = "whatever"
    content = RecordDict({ARRAYS: to_array_record(model.state_dict(), "fp32"), CONFIG: garbled})
    app = make_client_app(lambda context: node_at(run_copy, capped))
    for name in ("_run_id", "_task_id", "_node_id"):  # as Flower's runtime sets them
        monkeypatch.setattr(TaskIdentity, name, 1)
    message = Message(content, dst_node_id=1, message_type="train")
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    out = app(message, context)
    refused = TrainReply.from_content(out.content).refused or ""
    assert "cannot read" in refused and "privacy.mode" in refused


def test_a_node_that_allows_no_dp_still_keeps_its_exact_metrics_when_it_says_minimal(run_copy):
    open_ = policy_from_node_config({"require-dp": "false", "release": "minimal"})
    model, job, _ = model_and_job(run_copy)
    off = dataclasses.replace(job, privacy=dataclasses.replace(job.privacy, mode="off"))
    reply, trained = train_round(off, model.state_dict(), node_at(run_copy, open_))
    assert trained is not None and reply.train_loss is None and reply.num_examples == 1
    assert reply.refused is None


# --- a local user on the node's machine (finding 7: world-readable state) ---


def test_no_other_local_user_can_read_a_nodes_state_or_its_shard(run_copy):
    model, job, cfg = model_and_job(run_copy)
    node = node_at(run_copy, deployed=False)
    train_round(job, model.state_dict(), node)
    evaluate_round(evaluate_instructions(cfg, job.model, 1), model.state_dict(), node)
    client = RunLayout(run_copy).client_state(0).parent
    paths = [client, *client.rglob("*")]
    assert {p.name for p in paths} >= {"state", "data", LEDGER, SECRET, "node_metrics.jsonl"}
    for path in paths:
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}"


# --- found by the adversarial review: what the first fixes still let through ---


def test_a_node_that_said_nothing_refuses_noise_that_protects_nothing(run_copy):
    """The coordinator sends a default node σ 0.05, or σ 0.2 with no budget. Before, it
    trained and its ledger read ε 469 (∞ at σ 0.02) after one round: "requires DP-SGD" was
    met by the mode's name alone. Now σ below 0.1 is refused, and a default node's ε is
    capped at 10."""
    model, job, _ = model_and_job(run_copy)
    silent = policy_from_node_config({})
    for sigma, why in ((0.05, "protects nothing"), (0.2, None)):
        asked = dataclasses.replace(
            job.privacy, target_epsilon=None, noise_multiplier=sigma, max_epsilon=None
        )
        reply, trained = train_round(
            dataclasses.replace(job, privacy=asked), model.state_dict(), node_at(run_copy, silent)
        )
        assert trained is None
        assert why in (reply.refused or "") if why else reply.budget_exhausted
    assert not (RunLayout(run_copy).client_state(0) / LEDGER).exists()  # σ fixed by nothing


def test_a_backup_restored_after_its_pending_release_left_never_reuses_that_nonce(
    run_copy, monkeypatch
):
    """The nightly backup copies the state directory while a round trains (its entry
    pending); the round's update leaves; the backup is restored and the coordinator asks
    for the same round. Before, the stale pending entry made it a "crash re-run": the
    same nonce, the same noise, one ledger entry for two releases."""
    from flowerbed.client import local_round

    node = node_at(run_copy)
    backup = run_copy.parent / "nightly"
    train_here = local_round._train_here

    def backup_while_training(*args, **kwargs):
        if not backup.exists():
            shutil.copytree(node.state_dir, backup)
        return train_here(*args, **kwargs)

    monkeypatch.setattr(local_round, "_train_here", backup_while_training)
    model, job, _ = model_and_job(run_copy)
    sent = {k: v.clone() for k, v in model.state_dict().items()}
    _, first = train_round(job, sent, node)
    shutil.rmtree(node.state_dir)
    shutil.copytree(backup, node.state_dir)
    _, second = train_round(job, sent, node)
    assert first is not None and second is not None
    assert not torch.equal(update_of(first, sent), update_of(second, sent))
    entries = ledger_entries(run_copy)
    assert len(entries) == 2 and len({e["nonce"] for e in entries}) == 2


def test_a_restored_backup_never_correlates_fresh_noise_with_banded_noise_that_left(
    run_copy, monkeypatch
):
    """Banded noise subtracts the last steps' noise from each new draw. The node releases
    rounds 1 and 2; the operator restores the backup taken after round 1 and the
    coordinator asks for round 3. Buffers ending at round 1 would correlate round 3's noise
    with round 1's noise a second time, in round 2's place, which no ledger counts:
    the node must start from empty buffers (a new mechanism, counted like any other)."""
    from flowerbed.privacy.correlated_noise import CorrelatedNoise

    node = node_at(run_copy)
    resumed: list[int] = []
    resume = CorrelatedNoise.resume.__func__

    def recorded(cls, *args):
        noise = resume(cls, *args)
        resumed.append(len(noise.history))
        return noise

    monkeypatch.setattr(CorrelatedNoise, "resume", classmethod(recorded))
    backup = run_copy.parent / "after-round-1"
    for round_ in (1, 2):
        model, job, _ = model_and_job(run_copy, round_, mechanism="banded", bands=3)
        sent = {k: v.clone() for k, v in model.state_dict().items()}
        _, trained = train_round(job, sent, node)
        assert trained is not None
        if round_ == 1:
            shutil.copytree(node.state_dir, backup)
    assert resumed == [0, 2]  # an untouched node resumes both buffers
    shutil.rmtree(node.state_dir)
    shutil.copytree(backup, node.state_dir)
    model, job, _ = model_and_job(run_copy, 3, mechanism="banded", bands=3)
    _, trained = train_round(job, {k: v.clone() for k, v in model.state_dict().items()}, node)
    assert trained is not None and resumed[-1] == 0
    assert len(ledger_entries(run_copy)) == 3  # the mirror recounted what the backup forgot


def test_a_coordinator_lowering_the_clipping_norm_cannot_read_last_rounds_gradient(tmp_path):
    """Banded noise: row t of C·y is Σ c_j x_{t-j} + z_t. With the kept noise at σC, a
    coordinator that lowers `privacy.max_grad_norm` 1000x for round 2 makes round 2's
    first row carry round 1's last clipped sum under 1000x less noise, and reads it back
    (found by review: cosine 0.96 with the record's gradient). Noise drawn as the node
    draws it (its keyed Gaussian, its noise step, the ring saved and resumed)."""
    from types import SimpleNamespace

    from flowerbed.privacy.banded import strategy
    from flowerbed.privacy.correlated_noise import CorrelatedNoise
    from flowerbed.privacy.secret_noise import KeyedGaussian, add_keyed_noise

    bands, steps, size, sigma = 4, 4, 20000, 1.0
    coefficients = strategy(bands, 100)
    gradient = torch.randn(size, dtype=torch.float64)
    gradient /= gradient.norm()  # one record's clipped gradient, round 1's last step
    released = []
    for round_, clip, after in ((1, 1.0, ""), (2, 1e-3, "release-1")):
        kept = CorrelatedNoise.resume(coefficients, tmp_path, round_, after)
        gaussian = KeyedGaussian(os.urandom(32))
        for t in range(steps):
            param = torch.nn.Parameter(torch.zeros(size, dtype=torch.float64))
            last = round_ == 1 and t == steps - 1
            param.summed_grad = gradient.clone() if last else torch.zeros_like(param)
            optimizer = SimpleNamespace(
                params=[param], noise_multiplier=sigma, max_grad_norm=clip, correlated=kept
            )
            add_keyed_noise(optimizer, gaussian)
            released.append(param.grad.detach().clone())
        kept.save(tmp_path, round_, f"release-{round_}")
    row = sum(c * released[steps - j] for j, c in enumerate(coefficients))
    estimate = row / coefficients[1]
    assert float(estimate @ gradient / estimate.norm()) < 0.1


def test_changed_data_makes_another_request_so_a_pending_nonce_is_not_reused(run_copy):
    """A crash leaves an entry pending; before the re-run the shard's blocks change but not
    their count. Before, the request saw only counts: the same noise over other data."""
    from flowerbed.client.local_round import release_request

    node = node_at(run_copy)
    model, job, _ = model_and_job(run_copy)
    weights = model.state_dict()
    before = release_request(job, weights, node)
    tokens = node.data_dir / "train.tokens.npy"
    np.save(tokens, np.ascontiguousarray(np.load(tokens)[::-1]))  # same blocks, other order
    assert release_request(job, weights, node) != before


def test_a_new_state_dir_for_the_same_data_counts_the_releases_made_before(run_copy):
    """The operator wipes (or replaces) the state directory, or starts a second SuperNode
    on the same data with its own. Before, the new ledger started again at ε 0."""
    model, job, _ = model_and_job(run_copy)
    node = dataclasses.replace(node_at(run_copy), mirror_dir=run_copy / "mirrors")  # ~/.local
    train_round(job, model.state_dict(), node)
    spent = ledger_entries(run_copy)[-1]["epsilon"]
    other = dataclasses.replace(node, state_dir=run_copy / "second-state")
    _, trained = train_round(job, model.state_dict(), other)
    assert trained is not None
    entries = json.loads((other.state_dir / LEDGER).read_text())["entries"]
    assert len(entries) == 2 and entries[-1]["epsilon"] > spent


def test_user_level_noise_is_sized_by_the_updates_averaged_not_the_clients_sampled(cache_dir):
    """Ten clients sampled, one update admitted: before, the mean of that one update got
    noise of σC/10, an effective σ of 0.1 while the accountant counted 1."""
    from flowerbed.server.admission import ClientUpdate
    from flowerbed.server.combiners import ClippedNoisedMean

    federation = {"num_clients": 10}
    cfg = tiny_config(
        cache_dir, federation=federation, privacy={"mode": "user_level", "noise_multiplier": 1.0}
    )
    combiner = ClippedNoisedMean(cfg.combiner, cfg)
    current = {"w": torch.zeros(20_000)}
    lone = ClientUpdate(None, {"w": torch.zeros(20_000)}, 1.0)  # type: ignore[arg-type]
    noise = combiner.combine([lone], current, 1)["w"]
    clip = cfg.privacy.max_grad_norm
    assert float(noise.std()) == pytest.approx(1.0 * clip / 1, rel=0.05)


def test_a_misspelled_policy_key_is_refused_not_ignored():
    """`max_epsilon=1` (an underscore) was dropped and the node ran on its defaults."""
    from flowerbed.client.node import NodeConfigError

    context = Context(
        1, 1, {"data-dir": "/d", "state-dir": "/s", "max_epsilon": 1.0}, RecordDict(), {}
    )
    with pytest.raises(NodeConfigError, match="did you mean max-epsilon"):
        Node.from_context(context)


def test_an_institutions_shard_leaves_no_copy_of_its_text_and_is_private_from_the_start(
    tmp_path, monkeypatch
):
    """`deploy shard` used to keep the raw records and the token shard in ~/.cache at 0644
    and wrote the shard readable before making it private."""
    import tempfile

    from flowerbed.config import compose_config
    from flowerbed.data import ClientShard, byte_tokenizer
    from flowerbed.deploy.shard import add_experience

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    (tmp_path / "notes.txt").write_text("Discharge summary: PATIENT-SECRET recovered. " * 200)
    byte_tokenizer().save_pretrained(tmp_path / "tokenizer")
    data_cfg = compose_config("data=files", "data.paths=[x]", "data.seq_len=64").data
    save = ClientShard.save
    modes = []
    monkeypatch.setattr(
        ClientShard,
        "save",
        lambda shard, folder: (
            modes.append(stat.S_IMODE(folder.parent.stat().st_mode)) or save(shard, folder)
        ),
    )
    data = tmp_path / "data"
    add_experience(data, [str(tmp_path / "notes.txt")], data_cfg, tmp_path / "tokenizer")
    assert modes == [0o700]  # the data directory was private before a block was written
    assert list(scratch.iterdir()) == []  # the packing cache is gone
    for path in [data, *data.rglob("*")]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


def test_a_crashed_ranked_rounds_task_is_removed_by_the_next_message(run_copy):
    """A ranked round's task (with the release's noise key) lived in the machine's /tmp and
    stayed there after a SIGKILL. It now lives in the state directory, cleared on entry."""
    from flowerbed.client.state_dir import RANKS_SCRATCH

    node = node_at(run_copy)
    left = node.state_dir / RANKS_SCRATCH / "flowerbed-ranks-crashed"
    left.mkdir(parents=True)
    (left / "task.pt").write_bytes(b"a noise key")
    with own_state_dir(node.state_dir, node.data_dir, True, node.ledger_mirror()):
        assert not (node.state_dir / RANKS_SCRATCH).exists()


# --- secure aggregation (SecAgg+) ---

MOD = 2**32
BITS = 22
WEIGHT_ONE = 2**BITS
"""The weight factor of weight 1: the first masked value, known to the coordinator."""
SLICE = 2**12
"""The coordinator's search per unknown pairwise mask: seeds around the true folded seed
(the full attack searches 2^28 per mask: ~9 core-minutes, measured)."""


def folded(key: bytes) -> int:
    """What Flower's `pseudo_rand_gen` kept of a key: its 32-bit words XORed together."""
    seed = 0
    for i in range(0, len(key), 4):
        seed ^= int.from_bytes(key[i : i + 4], "little")
    return seed


def flower_mask(seed: int, words: int) -> np.ndarray:
    """The mask Flower's generator (which flowerbed used before) draws from a 32-bit seed,
    laid out as its mod laid out an update: the weight factor, then the tensor."""
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

    first, rest = pseudo_rand_gen(seed.to_bytes(4, "little"), MOD, [(1,), (words - 1,)])
    return np.concatenate([first, rest]).astype(np.int64)


def meet_in_the_middle(
    masked: np.ndarray, own_mask: np.ndarray, signs: tuple[int, int], seeds: tuple[list, list]
) -> list[np.ndarray]:
    """The coordinator's attack on a survivor with two unknown pairwise masks: its masked
    update minus its self mask (rebuilt at unmask, by design) and the known weight factor
    leaves sign_b x mask_b + sign_c x mask_c in the first word. A table of mask_b's first
    word over one seed space, looked up for each seed of mask_c, finds the pair; the
    updates the candidate pairs reveal, where every value is a plausible quantized one."""
    target = int(masked[0] - WEIGHT_ONE - own_mask[0]) % MOD
    table: dict[int, list[int]] = {}
    for seed in seeds[0]:
        table.setdefault(int(flower_mask(seed, 2)[0]), []).append(seed)
    revealed = []
    for seed_c in seeds[1]:
        need = signs[0] * (target - signs[1] * int(flower_mask(seed_c, 2)[0])) % MOD
        for seed_b in table.get(need, []):
            words = len(masked)
            pairwise = signs[0] * flower_mask(seed_b, words) + signs[1] * flower_mask(seed_c, words)
            update = (masked.astype(np.int64) - own_mask - pairwise) % MOD
            if update[0] == WEIGHT_ONE and (update[1:] <= WEIGHT_ONE).all():
                revealed.append(update[1:])
    return revealed


def around(seed: int) -> list[int]:
    """A reduced seed space that holds `seed`."""
    return [seed ^ j for j in range(SLICE)]


def three_key_pairs() -> dict[int, tuple[bytes, bytes]]:
    """Nodes 1, 2 and 3's first key pairs (private, public), as the set-up makes them."""
    pairs = {}
    for node in (1, 2, 3):
        private, public = generate_key_pairs()
        pairs[node] = (private_key_to_bytes(private), public_key_to_bytes(public))
    return pairs


def ecdh(private_pem: bytes, public_pem: bytes) -> bytes:
    from cryptography.hazmat.primitives import serialization

    private = serialization.load_pem_private_key(private_pem, password=None)
    public = serialization.load_pem_public_key(public_pem)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    return private.exchange(ec.ECDH(), public)


def test_the_coordinator_cannot_find_a_three_client_rounds_masks_by_searching_folded_seeds():
    from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

    pairs, words = three_key_pairs(), 9
    signs = (1, -1)  # node 2 adds its mask with node 1 and subtracts its mask with node 3
    # before: node 2's update masked as Flower's mod masked it (keys are base64 text)
    keys = [
        generate_shared_key(bytes_to_private_key(pairs[2][0]), bytes_to_public_key(pairs[n][1]))
        for n in (1, 3)
    ]
    quantized = np.random.default_rng(0).integers(0, WEIGHT_ONE, words - 1)
    own = flower_mask(folded(os.urandom(32)), words)
    pairwise = signs[0] * flower_mask(folded(keys[0]), words)
    pairwise += signs[1] * flower_mask(folded(keys[1]), words)
    masked = (np.concatenate([[WEIGHT_ONE], quantized]) + own + pairwise) % MOD
    seeds = (around(folded(keys[0])), around(folded(keys[1])))
    revealed = meet_in_the_middle(masked, own, signs, seeds)
    assert any(np.array_equal(r, quantized) for r in revealed)  # the attack works on it
    # now: node 2's update masked by flowerbed's mod, the same search around the folded
    # seeds of the keys its masks really come from
    seed = os.urandom(32)
    state = SecAggState(
        stage=Stage.COLLECT,
        node_id=2,
        setup=RoundSetup(3, 3, 2, 1.0, BITS, 1.0),
        sk1=pairs[2][0],
        mask_seed=seed,
        neighbours={n: (pairs[n][1], b"") for n in (1, 2, 3)},
        seed_shares={1: b"", 2: b"", 3: b""},
    )
    update = np.random.default_rng(1).uniform(-0.5, 0.5, words - 1).astype(np.float32)
    record = masked_update(state, ArrayRecord({"w": Array(update)}), 1.0)
    masked = np.concatenate([ndarray_view(record[n]) for n in (WEIGHT_FACTOR, "w")])
    own = self_mask(seed).words(words).astype(np.int64)  # what unmasking gives the coordinator
    keys = [mask_key(ecdh(pairs[2][0], pairs[n][1]), PAIRWISE_MASK) for n in (1, 3)]
    seeds = (around(folded(keys[0])), around(folded(keys[1])))
    assert meet_in_the_middle(masked.astype(np.int64), own, signs, seeds) == []


def flipped(secret: bytes, bit: int) -> bytes:
    out = bytearray(secret)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def test_a_mask_depends_on_every_bit_of_its_key():
    secret = os.urandom(32)
    secrets = [secret, *(flipped(secret, bit) for bit in range(256))]
    for purpose in (SELF_MASK, PAIRWISE_MASK):
        masks = {KeyStream(mask_key(s, purpose)).words(4).tobytes() for s in secrets}
        assert len(masks) == 257, purpose  # every flip its own mask
    # Flower's generator gave the same mask for the same bit flipped in any of the 8 words
    before = {flower_mask(folded(s), 4).tobytes() for s in secrets}
    assert len(before) == 33


FEWER = "fewer than the 3 its policy requires (min-secure-clients)"
LYING = "so a coordinator telling neighbours different stories could rebuild both of its secrets"
ALONE = "fewer than the 2 without which the sum gives its update away"


def never_trains(msg: Message, context: Context) -> Message:
    raise AssertionError("the node trained in a round it should have refused")


@pytest.mark.parametrize(
    ("sample", "neighbours", "threshold", "refusal"),
    [
        (1, 1, 1, f"the coordinator sampled 1 client(s), {FEWER}"),
        (2, 2, 1, f"the coordinator sampled 2 client(s), {FEWER}"),
        (3, 3, 1, f"the threshold 1 is not above half of its 3 neighbours, {LYING}"),
        (5, 2, 2, f"it would share masks with 1 other client(s), {ALONE}"),
    ],
)
def test_a_node_refuses_a_secure_round_it_cannot_hide_in_before_it_sends_a_key(
    monkeypatch, sample, neighbours, threshold, refusal
):
    as_coordinator(monkeypatch)
    masked_only = dataclasses.replace(accepting_all(), require_secure_aggregation=True)
    mod = secure_aggregation_mod(node_of(masked_only))
    context = Context(1, 101, {"partition-id": 0}, RecordDict(), {})
    setup = RoundSetup(sample, neighbours, threshold, 1.0, BITS, 1.0)
    reply = mod(stage_message(Stage.SETUP, setup.to_config()), context, never_trains)
    assert stage(reply) is None  # no public key left the node: only its refusal
    refused = TrainReply.from_content(reply.content).refused
    assert refused == f"client 0 refuses the secure round: {refusal}"
    # the coordinator carries on as if the node had set up: it gets nothing more
    own = public_key_to_bytes(generate_key_pairs()[1])
    later = {
        Stage.SHARE_KEYS: {Key.NODE_IDS: [101], Key.PUBLIC_KEYS_1: [own], Key.PUBLIC_KEYS_2: [own]},
        Stage.COLLECT: {Key.SOURCES: [], Key.CIPHERTEXTS: []},
        Stage.CONSISTENCY: {Key.ACTIVE: [101], Key.DEAD: []},
        Stage.UNMASK: {Key.SOURCES: [], Key.CONFIRMATIONS: []},
    }
    for name, config in later.items():
        with pytest.raises(ValueError, match="expected the setup stage"):
            mod(stage_message(name, config), context, never_trains)


def test_a_node_holds_the_coordinator_to_the_neighbours_it_announced(monkeypatch):
    as_coordinator(monkeypatch)
    mod = secure_aggregation_mod(node_of(accepting_all()))
    context = Context(1, 101, {"partition-id": 0}, RecordDict(), {})
    setup = RoundSetup(3, 3, 2, 1.0, BITS, 1.0)
    keys = mod(stage_message(Stage.SETUP, setup.to_config()), context, never_trains)
    config = keys.content.config_records["secagg"]
    alone = {Key.NODE_IDS: [101], Key.PUBLIC_KEYS_1: [config[Key.PUBLIC_KEY_1]]}
    alone[Key.PUBLIC_KEYS_2] = [config[Key.PUBLIC_KEY_2]]
    reply = mod(stage_message(Stage.SHARE_KEYS, alone), context, never_trains)
    assert stage(reply) is None  # no share of its secrets left the node
    assert TrainReply.from_content(reply.content).refused == (
        "client 0 refuses the secure round: the coordinator sent the keys of 1 neighbour(s), "
        "not the 3 the set-up announced"
    )


def test_a_node_asked_for_both_secrets_of_a_neighbour_refuses_and_the_round_says_why(
    monkeypatch,
):
    as_coordinator(monkeypatch)
    updates = [{"w": np.full(4, 0.1 * i, np.float32)} for i in range(3)]
    grid = federation(updates)

    def both_lists(message: Message) -> Message:  # the coordinator's lie, told every node
        if stage(message) == Stage.CONSISTENCY:
            config = message.content.config_records["secagg"]
            config[Key.DEAD] = list(config[Key.ACTIVE])
        return message

    grid.lie = both_lists
    with pytest.raises(SecureAggregationFailed, match="as both active and dropped out"):
        secure_round(grid, secagg(), {"w": (4,)})
    answered = [r for r in grid.received if stage(r) in (Stage.CONSISTENCY, Stage.UNMASK)]
    assert answered == []  # no node confirmed the lists, none sent a share


SPLIT = {"w": (4, 8), "b": (16,)}
Stories = dict[int, tuple[list[int], list[int]]]
"""Node -> the (active, dropped out) lists the coordinator tells it."""


def ask(grid: LocalGrid, node: int, name: str, config: dict) -> Message:
    """The coordinator's Message of one stage to one node, and the node's reply."""
    (reply,) = grid.send_and_receive([stage_message(name, config, node)])
    assert not reply.has_error(), reply.error
    return reply


def answer(reply: Message) -> ConfigRecord:
    assert stage(reply) is not None, TrainReply.from_content(reply.content).refused
    return reply.content.config_records["secagg"]


def refusal(reply: Message) -> str:
    assert stage(reply) is None, "the node answered"
    return str(TrainReply.from_content(reply.content).refused)


def keys_shared(grid: LocalGrid, setup: RoundSetup) -> tuple[dict[int, tuple], dict[int, dict]]:
    """A set-up and a faithful key exchange with every node: their public keys, and each
    node's encrypted shares by destination."""
    nodes = sorted(grid.contexts)
    keys = {}
    for node in nodes:
        config = answer(ask(grid, node, Stage.SETUP, setup.to_config()))
        keys[node] = (config[Key.PUBLIC_KEY_1], config[Key.PUBLIC_KEY_2])
    exchange = {Key.NODE_IDS: nodes}
    exchange[Key.PUBLIC_KEYS_1] = [keys[n][0] for n in nodes]
    exchange[Key.PUBLIC_KEYS_2] = [keys[n][1] for n in nodes]
    shared = {}
    for node in nodes:
        config = answer(ask(grid, node, Stage.SHARE_KEYS, exchange))
        shared[node] = dict(zip(config[Key.DESTINATIONS], config[Key.CIPHERTEXTS], strict=True))
    return keys, shared


def collect(grid: LocalGrid, node: int, shared: dict[int, dict], sources: list[int]) -> Message:
    forwarded = {Key.SOURCES: sources, Key.CIPHERTEXTS: [shared[s][node] for s in sources]}
    return ask(grid, node, Stage.COLLECT, forwarded)


def masked_updates(grid: LocalGrid, shared: dict[int, dict]) -> dict[int, dict[str, np.ndarray]]:
    """Every node's masked update, each having got every other node's shares."""
    nodes = sorted(grid.contexts)
    replies = {n: collect(grid, n, shared, [s for s in nodes if s != n]) for n in nodes}
    return {
        n: {k: ndarray_view(v).copy() for k, v in r.content.array_records[MASKED].items()}
        for n, r in replies.items()
    }


def tell(grid: LocalGrid, stories: Stories) -> dict[int, Message]:
    """The consistency check with each node's story, then the unmask stage with every
    confirmation forwarded to the node it was made for; the unmask replies."""
    confirmed = {}
    for node, (active, dead) in stories.items():
        lists = {Key.ACTIVE: active, Key.DEAD: dead}
        confirmed[node] = answer(ask(grid, node, Stage.CONSISTENCY, lists))
    return {
        node: ask(grid, node, Stage.UNMASK, {Key.CONFIRMATIONS: tags, Key.SOURCES: sources})
        for node, (tags, sources) in forward(confirmed, Key.CONFIRMATIONS).items()
    }


def test_a_coordinator_telling_nodes_different_dropout_stories_reads_no_update(monkeypatch):
    # The review's split view on five real nodes that require secure aggregation: the
    # target T hears only from A and B in the collect stage, so it would mask with them
    # alone; at unmask T is told A and B are active, B, C, D that A dropped out and A, C, D
    # that B did. Each request alone passed the node's checks, and T's self-mask seed and
    # A's and B's keys gave back T's update to within the quantization step.
    as_coordinator(monkeypatch)
    rng = np.random.default_rng(7)
    ups = [
        {n: rng.uniform(-0.3, 0.3, s).astype(np.float32) for n, s in SPLIT.items()}
        for _ in range(5)
    ]
    strict = policy_from_node_config({"require-secure-aggregation": True, "min-secure-clients": 5})
    grid = federation(ups, policy=strict)
    T, A, B, C, D = nodes = sorted(grid.contexts)
    # its set-up: 10 clients sampled (its word), 5 neighbours, threshold 3
    for node in nodes:
        said = refusal(
            ask(grid, node, Stage.SETUP, RoundSetup(10, 5, 3, 1.0, BITS, 1.0).to_config())
        )
        assert said.endswith(
            "every client of a round must be every other's neighbour, or they "
            "cannot confirm to each other who dropped out"
        )
    # the same play on a set-up the nodes accept: T refuses to mask with A and B alone
    _, shared = keys_shared(grid, RoundSetup(5, 5, 3, 1.0, BITS, 1.0))
    reply = collect(grid, T, shared, [A, B])
    assert MASKED not in reply.content.array_records  # T's update never left it
    assert refusal(reply) == (
        "client 0 refuses the secure round: the coordinator forwarded the shares of 2 of its "
        "4 other neighbours, and a node masks with all of them (one that dropped out in the "
        "key exchange calls for a new set-up)"
    )
    # once T masks with every neighbour, the review's stories (each covering the node's
    # neighbours, as a node now requires) are confirmed by no node but one: none reveals
    _, shared = keys_shared(grid, RoundSetup(5, 5, 3, 1.0, BITS, 1.0))
    masked_updates(grid, shared)
    stories = {
        T: ([T, A, B], [C, D]),
        A: ([A, C, D, T], [B]),
        B: ([B, C, D, T], [A]),
        C: ([C, D, T], [A, B]),
        D: ([C, D, T], [A, B]),
    }
    unmasked = tell(grid, stories)
    assert sorted(unmasked) == nodes  # every node was asked; none sent a share
    for node, reply in unmasked.items():
        confirmed = 1 if node in (C, D) else 0  # C and D were told the same story
        assert refusal(reply).endswith(
            f"only {confirmed} of its neighbours confirmed the survivor list it was told, fewer "
            "than the 2 the threshold 3 needs besides itself: the coordinator told them another "
            "story, or too many dropped out"
        )


def test_dropout_stories_that_pass_every_nodes_checks_unmask_nothing_unconfirmed(monkeypatch):
    # Every node masks with all four others, and each story covers its neighbours with
    # itself and at least 3 active: each passes the node's own checks. Together they would
    # reveal T's and A's self-mask seeds and C's, D's and E's keys: the sum of T and A
    # alone, two clients where the threshold promises no sum of fewer than 3, and T's
    # update outright were A the coordinator's.
    as_coordinator(monkeypatch)
    rng = np.random.default_rng(8)
    ups = [
        {n: rng.uniform(-0.3, 0.3, s).astype(np.float32) for n, s in SPLIT.items()}
        for _ in range(5)
    ]
    grid = federation(ups)
    T, A, C, D, E = sorted(grid.contexts)
    keys, shared = keys_shared(grid, RoundSetup(5, 5, 3, 1.0, BITS, 1.0))
    masked = masked_updates(grid, shared)
    stories = {
        T: ([T, A, E], [C, D]),
        A: ([A, T, C], [D, E]),
        C: ([C, T, A], [D, E]),
        D: ([D, T, A], [C, E]),
        E: ([E, T, A, D], [C]),
    }
    # what the nodes would send, each by its own story, gives T's and A's sum
    held = {n: SecAggState.load(grid.contexts[n]) for n in stories}
    seeds = {
        o: [held[n].seed_shares[o] for n, (act, _) in stories.items() if o in act] for o in (T, A)
    }
    secret = {
        o: [held[n].key_shares[o] for n, (_, dead) in stories.items() if o in dead]
        for o in (C, D, E)
    }
    assert all(len(s) >= 3 for s in [*seeds.values(), *secret.values()])
    masks = [(self_mask(combine_shares(seeds[o])), -1) for o in (T, A)]
    masks += [
        (pairwise_mask(combine_shares(secret[w]), keys[o][0]), -pairwise_sign(o, w))
        for w in (C, D, E)
        for o in (T, A)
    ]
    total = {name: masked[T][name] + masked[A][name] for name, _ in layout(SPLIT)}
    for name, _ in layout(SPLIT):
        apply_masks(total[name], masks)
    assert int(total[WEIGHT_FACTOR][0]) == 2 * WEIGHT_ONE
    pair = dequantize_mean(total["w"], 2, 2 * WEIGHT_ONE, 1.0, BITS)
    assert np.abs(pair - (ups[0]["w"] + ups[1]["w"]) / 2).max() < 2 / WEIGHT_ONE
    # the nodes confirm their lists to each other first: no list is confirmed by 3
    unmasked = tell(grid, stories)
    assert sorted(unmasked) == sorted(stories)
    for node, reply in unmasked.items():  # no share left a node
        confirmed = 1 if node in (A, C) else 0  # A and C were told the same story
        assert f"only {confirmed} of its neighbours confirmed the survivor list" in refusal(reply)


@pytest.mark.parametrize("claimed", [WEIGHT_ONE * 1000, 0])
def test_a_client_writing_a_weight_it_does_not_have_gets_the_rounds_sum_rejected(
    monkeypatch, claimed
):
    as_coordinator(monkeypatch)
    updates = [{"w": np.full(4, 0.1 * i, np.float32)} for i in range(3)]
    grid = federation(updates)

    def hostile(reply: Message) -> Message:  # client 1 adds to its own masked weight
        if reply.metadata.src_node_id == 102 and stage(reply) == Stage.COLLECT:
            record = reply.content.array_records[MASKED]
            factor = ndarray_view(record[WEIGHT_FACTOR]).astype(np.int64)
            record[WEIGHT_FACTOR] = Array(((factor + claimed - WEIGHT_ONE) % MOD).astype(np.uint32))
        return reply

    grid.tamper = hostile
    secure = secure_round(grid, secagg(), {"w": (4,)})
    assert secure.mean_update is None
    assert secure.rejected is not None and secure.rejected.endswith("the round's sum is rejected")
    reason = "more than 3 client(s) x 2^22" if claimed else "but 3 of the 3 survivors trained"
    assert reason in secure.rejected


def test_the_largest_allowed_round_sums_every_client_at_the_clipping_range_without_wrapping():
    with pytest.raises(ConfigError, match=r"1024 clients of secagg\.quantization_bits=22 overflow"):
        compose_config("federation.secure_aggregation=secaggplus", "federation.num_clients=1024")
    cfg = compose_config("federation.secure_aggregation=secaggplus", "federation.num_clients=1023")
    clients, rng = 1023, np.random.default_rng(0)
    edge = np.array([5.0, -5.0, 1.0, -1.0], np.float32)  # clipped to +-1, or exactly at it
    total = np.zeros(4, np.uint32)
    for _ in range(clients):
        np.add(total, quantize(edge, WEIGHT_ONE, 1.0, BITS, rng), out=total)
    sums = {WEIGHT_FACTOR: np.array([clients * WEIGHT_ONE], np.uint32), "w": total}
    mean, rejected = mean_update(sums, clients, clients, cfg.secagg)
    assert rejected is None and mean is not None
    assert np.array_equal(mean["w"], [1.0, -1.0, 1.0, -1.0])
    # one client more and the weights alone wrap to 0 (what 1,024 clients did before)
    assert (clients + 1) * WEIGHT_ONE % MOD == 0


# --- a hostile institution against the defaults ---
# The attacker is the last client of the round. It trains as the others do, then changes its
# reply as `client/faults.py` plays it (a simulated node runs the same function), and the
# server aggregates with conf/config.yaml's defaults, DP-SGD included. Honest updates share a
# direction and differ by noise, as one round's updates do (same weights, steps, learning rate).

Weights = dict[str, torch.Tensor]
SHAPES = {"embed": (64, 16), "proj": (16, 16)}


def honest_round(clients: int, seed: int = 0) -> tuple[Weights, list[Weights]]:
    """The global weights, and the weights each client trained from them."""
    generator = torch.Generator().manual_seed(seed)

    def draw(scale: float) -> Weights:
        return {k: scale * torch.randn(s, generator=generator) for k, s in SHAPES.items()}

    current, direction = draw(1.0), draw(0.01)
    trained = []
    for _ in range(clients):
        noise = draw(0.005)
        trained.append({k: current[k] + direction[k] + noise[k] for k in SHAPES})
    return current, trained


def hostile(kind: str, scale: float, trained: Weights, current: Weights) -> Weights:
    """What the attacker sends in place of `trained`: its fault, as a simulated node plays it."""
    faults = FaultsConfig(kind=kind, clients=[0], scale=scale)
    return misbehave(faults, TrainReply(0, 1, 0, 0.0), trained, current, 1)[1]


def aggregate(
    cfg: FlowerbedConfig, sent: list[Weights], claims: list[int], current: Weights
) -> Aggregate:
    """One round of the server's pipeline on these replies (claims: their weights)."""
    replies = [
        TrainReply(i, claim, 0, 0.0, weights=to_array_record(weights, "fp32"))
        for i, (weights, claim) in enumerate(zip(sent, claims, strict=True))
    ]
    pipeline = AggregationPipeline(cfg, outer_optimizer(cfg.strategy))
    return pipeline.aggregate(1, replies, to_array_record(current, "fp32"), current)


def step(new: Weights, current: Weights) -> torch.Tensor:
    return torch.cat([(new[k] - current[k]).reshape(-1) for k in SHAPES])


def mean_of(trained: list[Weights]) -> Weights:
    return {k: torch.stack([t[k] for t in trained]).mean(dim=0) for k in SHAPES}


def cosine(result: Aggregate, current: Weights, honest: list[Weights]) -> float:
    """Cosine of the global step with the honest clients' mean step."""
    assert result.weights is not None
    honest_step = step(mean_of(honest), current)
    return float(
        torch.nn.functional.cosine_similarity(step(result.weights, current), honest_step, 0)
    )


def test_an_update_flipped_and_scaled_1e4_is_left_out_by_the_default_config():
    cfg = compose_config()  # DP-SGD, mean, max_update_norm=auto
    current, trained = honest_round(4)
    sent = [*trained[:3], hostile("scaled", -1e4, trained[3], current)]
    result = aggregate(cfg, sent, [1, 1, 1, 1], current)
    assert set(result.rejected) == {"3"}
    assert "federation.max_update_norm=auto (10 x the round's median" in result.rejected["3"]
    assert result.weights is not None
    expected = mean_of(trained[:3])
    assert all(torch.allclose(result.weights[k], expected[k], atol=1e-6) for k in SHAPES)
    assert cosine(result, current, trained[:3]) > 0.999


@pytest.mark.parametrize("privacy", ["dp_sgd", "user_level"])
def test_under_dp_a_reply_claiming_weight_1e9_weighs_1_like_every_other(privacy):
    cfg = compose_config(f"privacy={privacy}")
    current, trained = honest_round(4)
    sent = [*trained[:3], hostile("sign_flip", 1.0, trained[3], current)]  # as long as honest
    result = aggregate(cfg, sent, [1, 1, 1, 10**9], current)  # node policy `exact`: any count
    assert not result.rejected and [u.weight for u in result.admitted] == [1.0] * 4
    if privacy == "dp_sgd":  # (user-level DP adds its noise to the same equal-weight mean)
        assert result.weights is not None
        expected = mean_of(sent)
        assert all(torch.allclose(result.weights[k], expected[k], atol=1e-6) for k in SHAPES)
        assert cosine(result, current, trained[:3]) > 0.3


def test_without_dp_a_claim_of_1e9_counts_as_4_times_the_largest_honest_claim():
    cfg = compose_config("privacy=off")  # max_examples_per_client=auto
    current, trained = honest_round(4)
    flipped = hostile("sign_flip", 1.0, trained[3], current)  # as long as an honest update
    result = aggregate(cfg, [*trained[:3], flipped], [2400, 2736, 3100, 10**9], current)
    assert result.weights is not None
    theirs = step(flipped, current)  # the step a claim of 1e9 made the server take before
    assert (step(result.weights, current) - theirs).norm() > 0.5 * theirs.norm()
    cap = cfg.federation.examples_factor * 3100  # the largest claim of the others
    assert [u.weight for u in result.admitted] == [2400, 2736, 3100, cap]


def test_multikrum_averages_a_selected_hostile_update_claiming_1e9_as_one_of_equals():
    # Without DP and with the weight cap off: the operator trusts Multi-Krum (f = 1 of 5).
    cfg = compose_config(
        "privacy=off", "combiner=multikrum", "federation.num_clients=5",
        "federation.max_examples_per_client=null",
    )  # fmt: skip
    current, trained = honest_round(5)
    honest = trained[:4]
    # The attacker sends the honest clients' mean step cut by 30% (it slows everyone down):
    # the most central update of the round, so Krum keeps it, and its claim of 1e9 made it
    # the whole step before.
    centre, pull = mean_of(honest), step(mean_of(honest), current).norm()
    poisoned = {k: centre[k] - 0.3 * (centre[k] - current[k]) for k in SHAPES}
    result = aggregate(cfg, [*honest, poisoned], [2736] * 4 + [10**9], current)
    assert result.weights is not None and pull > 0
    got = step(result.weights, current)
    # the equal-weight mean of the attacker and three honest updates (Krum drops one)
    selections = [[*honest[:i], *honest[i + 1 :], poisoned] for i in range(4)]
    assert any(torch.allclose(got, step(mean_of(s), current), atol=1e-6) for s in selections)
    assert (got - step(poisoned, current)).norm() > 0.05 * pull  # not the attacker's step


@pytest.mark.slow
def test_a_client_flipping_its_update_x1e4_leaves_a_default_run_within_10_percent(
    cache_dir, tmp_path
):
    # conf/config.yaml's defaults (DP-SGD, replay, mean, auto bounds) on a tiny model;
    # the noise drawn from the run's seed so that the two runs differ only by the attacker.
    dp = {"mode": "dp_sgd", "target_epsilon": 8.0, "noise_seed": "run"}
    settings = {"privacy": dp, "continual": {"mode": "replay"}, "federation": {"num_clients": 4}}
    honest = simulate(tiny_config(cache_dir, **settings), tmp_path / "honest")
    attack = {"kind": "scaled", "scale": -1e4, "clients": [3]}  # faults=scaled faults.scale=-1e4
    hostile_run = simulate(tiny_config(cache_dir, **settings, faults=attack), tmp_path / "hostile")
    for line in (tmp_path / "hostile" / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        assert row["clients"] == 3 and set(row["rejected_clients"]) == {"3"}
        assert "is above federation.max_update_norm=auto" in row["rejected_clients"]["3"]
    assert honest["final_val_loss"] < honest["initial_val_loss"] - 0.3  # the honest run learns
    assert hostile_run["final_val_loss"] == pytest.approx(honest["final_val_loss"], rel=0.1)
