"""Model presets, pretrained loading, and weights over Flower's ArrayRecord."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from flowerbed.model import (
    build_model,
    from_array_record,
    num_parameters,
    record_nbytes,
    to_array_record,
)
from flowerbed.model.factory import load_pretrained, model_from_config, preset_config
from flowerbed.model.transport import read_only
from tests.conftest import section

VOCAB, EOS = 257, 256
TINY = section("model", "model=tiny")


def test_tiny_is_under_a_million_and_small_about_ten_million():
    assert num_parameters(build_model(TINY, VOCAB, EOS, 0)) < 1_000_000
    small = num_parameters(build_model(section("model", "model=small"), VOCAB, EOS, 0))
    assert 8_000_000 < small < 12_000_000


def test_embeddings_are_untied_by_default_and_the_seed_fixes_the_weights():
    a = build_model(TINY, VOCAB, EOS, seed=3)
    b = build_model(TINY, VOCAB, EOS, seed=3)
    assert a.get_input_embeddings().weight.data_ptr() != a.get_output_embeddings().weight.data_ptr()
    assert all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_a_tied_pretrained_model_is_untied_for_opacus(tmp_path: Path):
    tied = model_from_config(preset_config("tiny", VOCAB, EOS, tie_embeddings=True))
    tied.save_pretrained(tmp_path)
    model = load_pretrained(str(tmp_path), VOCAB, tie_embeddings=False)
    assert (
        model.get_input_embeddings().weight.data_ptr()
        != model.get_output_embeddings().weight.data_ptr()
    )
    assert torch.equal(model.get_input_embeddings().weight, model.get_output_embeddings().weight)


def test_missing_pretrained_model_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"model.pretrained=.*could not be loaded"):
        build_model(
            section("model", "model=pretrained", f"model.pretrained={tmp_path / 'absent'}"),
            VOCAB,
            EOS,
            0,
        )


@pytest.fixture
def state() -> dict[str, torch.Tensor]:
    return build_model(TINY, VOCAB, EOS, 0).state_dict()


def test_fp32_transport_is_exact(state):
    back = from_array_record(to_array_record(state, "fp32"), "fp32")
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_fp16_transport_halves_the_bytes(state):
    fp32, fp16 = to_array_record(state, "fp32"), to_array_record(state, "fp16")
    assert record_nbytes(fp16) / record_nbytes(fp32) == pytest.approx(0.5, abs=0.01)
    back = from_array_record(fp16, "fp16")
    assert all(
        back[k].dtype == torch.float32 and torch.allclose(back[k], state[k], atol=1e-3)
        for k in state
    )


def test_bf16_weights_travel_bit_exact(state):
    bf16 = {k: v.to(torch.bfloat16) for k, v in state.items()}
    back = from_array_record(to_array_record(bf16, "bf16"), "bf16")
    assert all(torch.equal(back[k], bf16[k].float()) for k in state)


def test_every_embedding_row_trains_including_end_of_text():
    model = build_model(TINY, VOCAB, EOS, 0)
    ids = torch.tensor([[1, 2, EOS, 3, EOS, 4]])
    model(input_ids=ids, labels=ids).loss.backward()
    assert model.get_input_embeddings().weight.grad[EOS].abs().sum() > 0


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_records_are_read_in_place_and_decoded_into_tensors_of_their_own(state, dtype):
    record = to_array_record(state, dtype)
    views = read_only(record, dtype)
    for name, view in views.items():  # over the record's own bytes, after the .npy header
        start = np.frombuffer(record[name].data, np.uint8).ctypes.data
        assert start < view.data_ptr() < start + len(record[name].data)
    decoded = from_array_record(record, dtype)
    assert all(torch.equal(decoded[k], views[k].float()) for k in state)
    name = next(iter(state))
    before = views[name].clone()
    decoded[name].add_(1.0)  # writable, and the record is untouched
    assert torch.equal(read_only(record, dtype)[name], before)
