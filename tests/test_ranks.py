"""Several ranks per client, on CPU with gloo: the same update as one rank, DP noise once.

A node's round on 2 ranks must equal the round on 1 (the same batches, split), without
DP and under DP-SGD with reproducible noise (`privacy.noise_seed=run`): the noise is
drawn once for the node, so it is the very draw one rank makes. Its variance is one
draw's, not two; the ledger gets one entry a round; a killed rank fails the round with a
sentence and leaves no process behind.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from flowerbed.client.local_round import train_round
from flowerbed.client.node import Node, NodeConfigError, ranks_of
from flowerbed.client.rank_processes import RankFailed, run_on_ranks
from flowerbed.config import FlowerbedConfig
from flowerbed.config.loader import ConfigError
from flowerbed.config.node_policy import accepting_all
from flowerbed.config.robustness import FaultsConfig
from flowerbed.model.adapter import add_adapter, shared_state
from flowerbed.model.factory import build_model, model_from_architecture
from flowerbed.model.ranks import ProcessGroupRanks, Ranks
from flowerbed.privacy.dp_sgd import PrivateStep
from flowerbed.privacy.ledger import FILENAME as LEDGER
from flowerbed.privacy.ledger import PrivacyLedger
from flowerbed.privacy.secret_noise import NoiseKey
from flowerbed.run.prepare import prepare_run
from flowerbed.server.instructions import model_spec, train_instructions
from flowerbed.tracking import RunLayout
from tests.conftest import tiny_config

DP = {"mode": "dp_sgd", "target_epsilon": 8.0, "delta": 1e-5, "noise_seed": "run"}
LORA = {"mode": "lora", "rank": 4, "target_modules": ["q_proj", "v_proj", "down_proj"]}
DILOCO = {"name": "diloco", "outer_lr": 0.7, "outer_momentum": 0.9, "keep_inner_state": True}


def _descendants(pid: int | None = None) -> dict[int, str]:
    """This process's descendants' command lines by id, but multiprocessing's resource
    tracker and fork server, which serve every round of the process and end with it."""
    pid = pid or os.getpid()
    found = {}
    for child in map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split()):
        line = Path(f"/proc/{child}/cmdline").read_text().replace("\0", " ")
        if not any(helper in line for helper in ("resource_tracker", "forkserver import main")):
            found[child] = line
        found |= _descendants(child)
    return found


def test_a_rank_takes_a_contiguous_share_and_whole_units():
    batch = torch.arange(7).unsqueeze(1)
    shares = [ProcessGroupRanks(r, 2).mine(batch)[0].flatten().tolist() for r in range(2)]
    assert shares == [[0, 1, 2, 3], [4, 5, 6]]
    units = torch.tensor([0, 0, 1, 2, 2, 2, 3])
    split = [ProcessGroupRanks(r, 2).mine(batch, units) for r in range(2)]
    assert [s[0].flatten().tolist() for s in split] == [[0, 1, 2], [3, 4, 5, 6]]
    assert [s[1].tolist() for s in split] == [[0, 0, 1], [0, 0, 0, 1]]
    empty = ProcessGroupRanks(1, 2).mine(batch[:0], units[:0])
    assert empty[0].shape == (0, 1) and empty[1].numel() == 0
    assert Ranks().mine(batch, units)[0] is batch


def test_ranks_the_config_cannot_serve_are_refused_with_the_fix(cache_dir):
    with pytest.raises(ConfigError, match=r"train\.batch_size=2 cannot be shared"):
        tiny_config(cache_dir, train={"batch_size": 2}, federation={"ranks_per_client": 3})
    with pytest.raises(ConfigError, match=r"set federation\.ranks_per_client=2 or more"):
        tiny_config(cache_dir, faults={"kind": "rank_crash", "clients": [0]})
    with pytest.raises(ConfigError, match=r"set federation\.client_gpus=2"):
        tiny_config(cache_dir, federation={"ranks_per_client": 2, "client_gpus": 0.5})
    for wrong in ("0", "two"):
        with pytest.raises(NodeConfigError, match=f"ranks='{wrong}'"):
            ranks_of(wrong, "cpu")
    assert ranks_of("auto", "cpu") == 1 and ranks_of(3, "cpu") == 3


def _prepared(cfg: FlowerbedConfig, root: Path):
    layout = RunLayout(root)
    prepare_run(cfg, layout)
    tokenizer = AutoTokenizer.from_pretrained(layout.tokenizer)
    base = build_model(cfg.model, len(tokenizer), tokenizer.eos_token_id, cfg.seed)
    spec = model_spec(cfg, base)
    return layout, shared_state(add_adapter(base, cfg.adapter)), spec


def _node(layout: RunLayout, ranks: int, faults: FaultsConfig | None = None) -> Node:
    data, state = layout.client_data(0), layout.client_state(0)
    return Node(0, data, state, "cpu", 1, accepting_all(), False, None, faults, ranks)


def _rounds(cfg: FlowerbedConfig, layout: RunLayout, model, spec, ranks: int, rounds: int):
    """`rounds` rounds of client 0 from a fresh state, each from the previous one's weights:
    the ledger's mirror, which outlives a lost state directory, goes too."""
    shutil.rmtree(layout.client_state(0), ignore_errors=True)
    _node(layout, ranks).ledger_mirror().unlink(missing_ok=True)
    weights, replies = {k: v.clone() for k, v in model.items()}, []
    for round_ in range(1, rounds + 1):
        job = train_instructions(cfg, spec, round_)
        reply, trained = train_round(job, weights, _node(layout, ranks))
        weights = {**weights, **trained}
        replies.append(reply)
    return weights, replies


def _largest_difference(a: dict, b: dict) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.mark.slow
def test_two_ranks_train_the_same_update_as_one(cache_dir, tmp_path):
    cfg = tiny_config(cache_dir, train={"local_steps": 4})
    layout, model, spec = _prepared(cfg, tmp_path / "run")
    one, one_replies = _rounds(cfg, layout, model, spec, ranks=1, rounds=1)
    two, two_replies = _rounds(cfg, layout, model, spec, ranks=2, rounds=1)
    assert _largest_difference(one, two) < 1e-5
    assert two_replies[0].train_loss == pytest.approx(one_replies[0].train_loss, rel=1e-5)
    assert two_replies[0].tokens == one_replies[0].tokens


@pytest.mark.slow
def test_dp_lora_replay_and_kept_moments_on_two_ranks_match_one_with_one_ledger_entry(
    cache_dir, tmp_path
):
    """Reproducible noise: the node's one draw is the draw one rank makes, so two rounds of
    DP-SGD with LoRA, continual replay and DiLoCo's kept moments end where one rank does;
    with banded noise too (every rank shapes the same draw with the same kept buffers,
    and the supervisor draws the cycle's classes)."""
    continual = {"mode": "replay", "experiences": 2, "replay_fraction": 0.25, "buffer_size": 32}
    cfg = tiny_config(
        cache_dir,
        privacy={**DP, "mechanism": "banded", "bands": 3},
        adapter=LORA,
        strategy=DILOCO,
        continual=continual,
        federation={"rounds": 2},
        train={"local_steps": 3, "batch_size": 8},
    )
    layout, model, spec = _prepared(cfg, tmp_path / "run")
    one, one_replies = _rounds(cfg, layout, model, spec, ranks=1, rounds=2)
    two, two_replies = _rounds(cfg, layout, model, spec, ranks=2, rounds=2)
    assert _largest_difference(one, two) < 1e-5
    ledger = PrivacyLedger.open(layout.client_state(0) / LEDGER, 1e-5, "prv", "sequence")
    assert [entry.round for entry in ledger.entries] == [1, 2]
    assert [r.epsilon for r in two_replies] == [r.epsilon for r in one_replies]
    assert len(list((layout.client_state(0) / "inner-optimizer").iterdir())) == 2
    assert len(list((layout.client_state(0) / "correlated-noise").iterdir())) == 2


def _dp_gradients(ranks: Ranks, device: torch.device, task: dict) -> dict | None:
    """The gradient one DP step applies (SGD at lr 1: the parameters' change), per clipping
    mode and noise multiplier, on this rank's share of `task["batch"]`."""
    out = {}
    for mode in ("bookkeeping", "hooks", "ghost"):
        for sigma in (0.0, task["sigma"]):
            model = model_from_architecture(task["architecture"], task["weights"]).to(device)
            before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
            step = PrivateStep(
                model,
                torch.optim.SGD(model.parameters(), lr=1.0),
                noise_multiplier=sigma,
                max_grad_norm=task["clip"],
                expected_batch_size=len(task["batch"]),
                mode=mode,
                max_physical_batch=3,
                noise=NoiseKey(key=bytes(range(32))),  # the node's one key, on every rank
                ranks=ranks,
            )
            step.step(ranks.mine(task["batch"].to(device))[0])
            step.close()
            after = torch.cat([p.detach().flatten() for p in model.parameters()])
            out[mode, sigma] = (before - after).cpu()
    return out if ranks.rank == 0 else None


def test_dp_noise_is_drawn_once_for_the_node_not_once_a_rank(cache_dir):
    cfg = tiny_config(cache_dir)
    model = build_model(cfg.model, 257, 0, cfg.seed)
    sigma, clip, rows = 1.0, 0.01, 12
    task = {
        "architecture": model_spec(cfg, model).architecture,
        "weights": model.state_dict(),
        "batch": torch.randint(0, 257, (rows, 16), generator=torch.Generator().manual_seed(1)),
        "sigma": sigma,
        "clip": clip,
    }
    one = _dp_gradients(Ranks(), torch.device("cpu"), task)
    two = run_on_ranks(_dp_gradients, task, 2, "cpu", 1, "the test's DP step")
    for mode in ("bookkeeping", "hooks", "ghost"):
        # every clipping mode clips the same records and sums them over the ranks
        assert torch.allclose(two[mode, 0.0], one[mode, 0.0], rtol=1e-4, atol=1e-8), mode
        noise = (two[mode, sigma] - two[mode, 0.0]) * rows / clip
        assert noise.std().item() == pytest.approx(sigma, rel=0.02), mode  # two: 1.41
        assert torch.allclose(two[mode, sigma], one[mode, sigma], rtol=1e-4, atol=1e-7), mode


@pytest.mark.slow
def test_a_killed_rank_fails_the_round_with_a_sentence_and_leaves_no_process(cache_dir, tmp_path):
    cfg = tiny_config(cache_dir, privacy=DP, federation={"ranks_per_client": 2})
    layout, model, spec = _prepared(cfg, tmp_path / "run")
    faults = FaultsConfig(kind="rank_crash", clients=[0], scale=1.0)
    job = train_instructions(cfg, spec, 1)
    before = _descendants()  # other tests' helpers (W&B's service) may be running
    with pytest.raises(RankFailed, match="rank 1 of 2 ended during client 0's round 1 "):
        train_round(job, model, _node(layout, 2, faults))
    assert multiprocessing.active_children() == []
    assert _descendants().keys() <= before.keys()
    # The round's write-ahead entry stays pending and counted: a re-run of the same request
    # draws what it drew, and the node never counts less than it might have released.
    ledger = PrivacyLedger.open(layout.client_state(0) / LEDGER, 1e-5, "prv", "sequence")
    assert [(e.round, e.pending) for e in ledger.entries] == [(1, True)]
