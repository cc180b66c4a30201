"""DP-SGD on a causal LM, in every clipping mode: clipping bounds each sequence; empty draws
still step."""

from __future__ import annotations

import pytest
import torch

from flowerbed.model import build_model
from flowerbed.privacy.dp_sgd import PrivateStep, per_sequence_loss
from tests.conftest import section

CLIP = 0.05
TINY = section("model", "model=tiny")


def flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def sgd_step(model, noise, batch, mode, physical=0, lr=1.0, clip=CLIP) -> PrivateStep:
    """DP-SGD over plain SGD, so the update is exactly lr times the private gradient."""
    return PrivateStep(
        model,
        torch.optim.SGD(model.parameters(), lr=lr),
        noise_multiplier=noise,
        max_grad_norm=clip,
        expected_batch_size=batch,
        mode=mode,
        max_physical_batch=physical,
    )


def clipped_mean_of_true_gradients(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Per-sequence gradients by plain autograd, one sequence at a time, clipped and averaged."""
    total = torch.zeros_like(flat(model))
    for row in ids:
        model.zero_grad()
        per_sequence_loss(model(input_ids=row[None]).logits, row[None]).sum().backward()
        grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        total += grad * min(1.0, CLIP / float(grad.norm()))
    model.zero_grad()
    return total / len(ids)


MODES = ["ghost", "bookkeeping", "hooks"]


# bookkeeping takes ghost norms at 24 tokens and explicit per-sample gradients at 80
@pytest.mark.parametrize("mode, seq_len", [(m, 24) for m in MODES] + [("bookkeeping", 80)])
@pytest.mark.parametrize("physical", [0, 2])
def test_with_no_noise_the_update_is_the_mean_of_clipped_sequence_gradients(
    mode, seq_len, physical
):
    model = build_model(TINY, 257, 256, seed=0)
    ids = torch.randint(0, 257, (5, seq_len), generator=torch.Generator().manual_seed(0))
    expected = clipped_mean_of_true_gradients(model, ids)
    before = flat(model)
    step = sgd_step(model, noise=0.0, batch=5, mode=mode, physical=physical, lr=1.0, clip=CLIP)
    step.step(ids)
    step.close()
    update = before - flat(model)
    torch.testing.assert_close(update, expected, rtol=1e-3, atol=1e-6)
    assert float(update.norm()) <= CLIP + 1e-6


@pytest.mark.parametrize("mode", MODES)
def test_one_sequence_moves_the_weights_by_at_most_the_clip(mode):
    model = build_model(TINY, 257, 256, seed=1)
    before = flat(model)
    step = sgd_step(model, noise=0.0, batch=1, mode=mode, physical=0, lr=1.0, clip=CLIP)
    step.step(torch.randint(0, 257, (1, 24)))
    step.close()
    assert float((before - flat(model)).norm()) == pytest.approx(CLIP, rel=1e-3)


@pytest.mark.parametrize("mode", MODES)
def test_an_empty_poisson_draw_takes_a_noise_only_step(mode):
    model = build_model(TINY, 257, 256, seed=0)
    before = flat(model)
    step = sgd_step(model, noise=1.0, batch=4, mode=mode, physical=0, lr=1.0, clip=CLIP)
    loss = step.step(torch.zeros((0, 24), dtype=torch.long))
    step.close()
    moved = before - flat(model)
    assert float(loss) == 0.0
    # Pure noise of std sigma*C/B on every coordinate, nothing else.
    assert float(moved.std()) == pytest.approx(1.0 * CLIP / 4, rel=0.05)


@pytest.mark.parametrize("mode", MODES)
def test_hooks_come_off_so_the_model_can_be_made_private_again(mode):
    model = build_model(TINY, 257, 256, seed=0)
    for _ in range(2):
        step = sgd_step(model, noise=1.0, batch=2, mode=mode, lr=0.1, clip=1.0)
        step.step(torch.randint(0, 257, (2, 16)))
        step.close()
    assert not any(
        hasattr(p, "grad_sample") and p.grad_sample is not None for p in model.parameters()
    )
    assert not any(m._forward_hooks for m in model.modules())


def test_bookkeeping_under_bf16_autocast_clips_as_ghost_does():
    """The GPU path's mixed dtypes (fp32 inputs, bf16 outputs), checked on CPU autocast."""
    ids = torch.randint(0, 257, (4, 24), generator=torch.Generator().manual_seed(0))
    updates = {}
    for mode in ("ghost", "bookkeeping"):
        model = build_model(TINY, 257, 256, seed=0)
        before = flat(model)
        step = sgd_step(model, noise=0.0, batch=4, mode=mode, lr=1.0, clip=CLIP)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            step.step(ids)
        step.close()
        updates[mode] = before - flat(model)
    cosine = torch.nn.functional.cosine_similarity(updates["ghost"], updates["bookkeeping"], dim=0)
    assert float(cosine) > 0.99
    assert float(updates["bookkeeping"].norm()) <= CLIP * 1.01


def test_bookkeeping_names_the_layers_it_cannot_clip_at_start():
    model = build_model(TINY, 257, 256, seed=0)
    model.model.layers[0].mlp.act_fn = torch.nn.PReLU()
    with pytest.raises(ValueError, match=r"model.layers.0.mlp.act_fn \(PReLU\).*hooks"):
        sgd_step(model, noise=1.0, batch=2, mode="bookkeeping")


def test_bookkeeping_refuses_a_weight_shared_by_two_layers():
    model = build_model(TINY, 257, 256, seed=0)
    model.lm_head.weight = model.model.embed_tokens.weight
    with pytest.raises(ValueError, match="tie_embeddings=false"):
        sgd_step(model, noise=1.0, batch=2, mode="bookkeeping")


def clipped_mean_of_unit_gradients(
    model: torch.nn.Module, ids: torch.Tensor, groups: torch.Tensor
) -> torch.Tensor:
    """Each unit's gradient by plain autograd, its blocks alone (their per-sequence losses
    summed), clipped as one, and averaged over the units."""
    total = torch.zeros_like(flat(model))
    units = groups.unique()
    for unit in units:
        rows = ids[groups == unit]
        model.zero_grad()
        per_sequence_loss(model(input_ids=rows).logits, rows).sum().backward()
        grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        total += grad * min(1.0, CLIP / float(grad.norm()))
    model.zero_grad()
    return total / len(units)


UNIT_MODES = [("bookkeeping", 24), ("bookkeeping", 80), ("hooks", 24)]
DOCUMENTS = torch.tensor([0, 0, 0, 1, 2, 2, 3])  # four documents of 3, 1, 2 and 1 blocks


@pytest.mark.parametrize("mode, seq_len", UNIT_MODES)
@pytest.mark.parametrize("physical", [0, 4])
def test_with_no_noise_the_update_is_the_mean_of_clipped_document_gradients(
    mode, seq_len, physical
):
    model = build_model(TINY, 257, 256, seed=0)
    ids = torch.randint(0, 257, (7, seq_len), generator=torch.Generator().manual_seed(1))
    expected = clipped_mean_of_unit_gradients(model, ids, DOCUMENTS)
    before = flat(model)
    step = sgd_step(model, noise=0.0, batch=4, mode=mode, physical=physical, lr=1.0, clip=CLIP)
    step.step(ids, DOCUMENTS)
    step.close()
    torch.testing.assert_close(before - flat(model), expected, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("mode", ["bookkeeping", "hooks"])
def test_a_document_spanning_many_blocks_moves_the_weights_by_at_most_the_clip(mode):
    model = build_model(TINY, 257, 256, seed=1)
    before = flat(model)
    step = sgd_step(model, noise=0.0, batch=1, mode=mode, physical=0, lr=1.0, clip=CLIP)
    step.step(torch.randint(0, 257, (8, 24)), torch.zeros(8, dtype=torch.long))
    step.close()
    # Eight blocks of one document: their summed gradient is clipped once, to the norm.
    assert float((before - flat(model)).norm()) == pytest.approx(CLIP, rel=1e-3)


def test_ghost_clipping_refuses_units():
    model = build_model(TINY, 257, 256, seed=0)
    step = sgd_step(model, noise=0.0, batch=1, mode="ghost")
    with pytest.raises(ValueError, match="ghost clips sequences only"):
        step.step(torch.randint(0, 257, (2, 24)), torch.zeros(2, dtype=torch.long))
    step.close()


def test_padding_is_neither_input_nor_target():
    model = build_model(TINY, 257, 256, seed=0)
    ids = torch.randint(0, 257, (1, 24), generator=torch.Generator().manual_seed(2))
    padded = torch.cat([ids[:, :10], torch.full((1, 14), -1)], dim=1)
    logits = model(input_ids=padded.clamp(min=0)).logits
    prefix = per_sequence_loss(model(input_ids=ids[:, :10]).logits, ids[:, :10])
    torch.testing.assert_close(per_sequence_loss(logits, padded, padded=True), prefix)
