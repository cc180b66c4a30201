"""LoRA adapters: only they travel, every client checks the base, DP clips exactly what
trains, the outputs reload and generate, and an interrupted run resumes exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flowerbed.client.local_round import global_model, train_round
from flowerbed.client.node import Node
from flowerbed.config import ConfigError
from flowerbed.config.node_policy import accepting_all
from flowerbed.model import build_model, record_nbytes, to_array_record
from flowerbed.model.adapter import BaseModelMismatch, add_adapter, shared_state
from flowerbed.privacy.dp_sgd import PrivateStep, per_sequence_loss
from flowerbed.run.simulation import continue_simulation, simulate
from flowerbed.server.instructions import model_spec, train_instructions
from tests.conftest import section, tiny_config

LORA = {"mode": "lora", "rank": 4, "target_modules": ["q_proj", "v_proj", "down_proj"]}
CLIP = 0.05


def lora_model(seed: int = 0) -> torch.nn.Module:
    """The tiny preset with adapters whose B is not zero, so A gets gradients too."""
    cfg = section("adapter", "adapter=lora", "adapter.rank=4")
    model = add_adapter(build_model(section("model", "model=tiny"), 257, 256, seed), cfg)
    torch.manual_seed(seed)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    return model


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def flat(params: list[torch.nn.Parameter]) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


def test_only_the_adapters_train_and_the_base_stays_frozen():
    model = lora_model()
    names = list(shared_state(model))
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert any("embed_tokens" in n for n in frozen) and any("base_layer" in n for n in frozen)


def test_adapters_on_layers_the_model_lacks_are_refused_naming_the_key():
    cfg = section("adapter", "adapter=lora", "adapter.target_modules=[attn]")
    with pytest.raises(ConfigError, match=r"adapter.target_modules=\['attn'\] does not fit"):
        add_adapter(build_model(section("model", "model=tiny"), 257, 256, 0), cfg)


@pytest.mark.parametrize("mode", ["ghost", "bookkeeping", "hooks"])
def test_dp_on_adapters_updates_by_the_mean_of_clipped_sequence_gradients(mode):
    model = lora_model()
    params = trainable(model)
    ids = torch.randint(0, 257, (5, 24), generator=torch.Generator().manual_seed(0))
    expected = torch.zeros_like(flat(params))
    for row in ids:  # per-sequence gradients of the adapters by plain autograd, clipped
        model.zero_grad()
        per_sequence_loss(model(input_ids=row[None]).logits, row[None]).sum().backward()
        grad = torch.cat([p.grad.reshape(-1) for p in params])
        expected += grad * min(1.0, CLIP / float(grad.norm())) / len(ids)
    model.zero_grad()
    before, base_before = flat(params), flat([p for p in model.parameters() if not p.requires_grad])
    step = PrivateStep(
        model,
        torch.optim.SGD(params, lr=1.0),
        noise_multiplier=0.0,
        max_grad_norm=CLIP,
        expected_batch_size=5,
        mode=mode,
        max_physical_batch=2,
    )
    step.step(ids)
    step.close()
    assert float(expected.norm()) > 0
    torch.testing.assert_close(before - flat(params), expected, rtol=1e-3, atol=1e-7)
    assert torch.equal(base_before, flat([p for p in model.parameters() if not p.requires_grad]))


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, cache_dir):
    """A real federation with adapters, DiLoCo's kept inner state and continual replay."""
    cfg = tiny_config(
        cache_dir,
        adapter=LORA,
        strategy=section("strategy", "strategy=diloco").__dict__,
        continual={"mode": "replay", "experiences": 2, "replay_fraction": 0.25},
        train={"lr": 1e-2},
    )
    run_dir = tmp_path_factory.mktemp("lora") / "run"
    return cfg, run_dir, simulate(cfg, run_dir)


@pytest.mark.slow
def test_a_lora_federation_learns_and_sends_adapters_only(lora_run):
    cfg, run_dir, summary = lora_run
    assert summary["final_val_loss"] < summary["initial_val_loss"] - 0.05
    adapters = load_file(run_dir / "final_adapter" / "adapter_model.safetensors")
    adapter_bytes = record_nbytes(to_array_record(adapters, "fp32"))
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        assert json.loads(line)["bytes_per_client"] == adapter_bytes
    # What a client's train reply carries: adapter tensors, every one of them.
    base = build_model(cfg.model, 257, 256, cfg.seed)
    spec = model_spec(cfg, base)
    weights = shared_state(add_adapter(base, cfg.adapter))
    node = Node(
        0,
        run_dir / "clients" / "client-0" / "data",
        run_dir / "scratch",
        "cpu",
        0,
        accepting_all(),
        False,
    )
    job = train_instructions(cfg, spec, 1)
    _, reply = train_round(job, weights, node)
    assert reply is not None and set(reply) == set(weights)
    assert all(".lora_A." in n or ".lora_B." in n for n in reply)


@pytest.mark.slow
def test_a_client_with_another_base_refuses_naming_both_hashes(lora_run):
    cfg, _, _ = lora_run
    base = build_model(cfg.model, 257, 256, cfg.seed)
    spec = model_spec(cfg, base)
    weights = shared_state(add_adapter(base, cfg.adapter))
    other = type(spec)(spec.architecture, spec.adapter, None, spec.base_seed + 1, spec.base_hash)
    with pytest.raises(BaseModelMismatch, match=f"server's has {spec.base_hash}") as err:
        global_model(other, weights)
    assert "has hash" in str(err.value) and "seed 1" in str(err.value)


@pytest.mark.slow
def test_the_merged_model_and_the_peft_adapter_reload_and_generate_alike(lora_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg, run_dir, _ = lora_run
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "final_model").eval()
    base = build_model(cfg.model, 257, 256, cfg.seed)
    adapted = PeftModel.from_pretrained(base, run_dir / "final_adapter").eval()
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        torch.testing.assert_close(
            merged(input_ids=ids).logits, adapted(input_ids=ids).logits, rtol=1e-4, atol=1e-5
        )
    out = merged.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 11)


@pytest.mark.slow
def test_an_interrupted_lora_run_resumes_to_the_same_adapters(lora_run, tmp_path: Path):
    cfg, complete, _ = lora_run
    crashed = tmp_path / "crashed"
    shutil.copytree(complete, crashed)
    shutil.rmtree(crashed / "checkpoints" / "round-00003")
    for folder in ("final_model", "final_adapter"):
        shutil.rmtree(crashed / folder)
    (crashed / "summary.json").unlink()
    continue_simulation(cfg, crashed)
    name = Path("final_adapter") / "adapter_model.safetensors"
    resumed, original = load_file(crashed / name), load_file(complete / name)
    assert set(resumed) == set(original)
    for key, tensor in original.items():
        torch.testing.assert_close(resumed[key], tensor, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_lora_fine_tunes_a_pretrained_base_each_client_loads_and_checks(
    federated_run, cache_dir, tmp_path: Path
):
    from flowerbed.model.adapter import base_fingerprint
    from flowerbed.model.factory import load_pretrained

    _, pretrained_run = federated_run
    base_dir = pretrained_run / "final_model"
    model = {"preset": "pretrained", "pretrained": str(base_dir)}
    cfg = tiny_config(cache_dir, model=model, adapter=LORA, federation={"rounds": 1})
    summary = simulate(cfg, tmp_path / "run")
    base = load_pretrained(str(base_dir), 257, False)
    assert summary["base_hash"] == base_fingerprint(base)
    assert summary["shared_parameters"] < summary["parameters"] / 10
    # A node whose own copy of the base differs refuses before it trains.
    with torch.no_grad():
        base.get_input_embeddings().weight[0] += 1.0
    base.save_pretrained(tmp_path / "other-base")
    spec = model_spec(cfg, load_pretrained(str(base_dir), 257, False))
    weights = shared_state(add_adapter(load_pretrained(str(base_dir), 257, False), cfg.adapter))
    with pytest.raises(BaseModelMismatch, match="other-base"):
        global_model(spec, weights, str(tmp_path / "other-base"))
