"""Correlated noise (privacy.mechanism=banded): the noise it adds, its sampling, its ε."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowerbed.config import ConfigError, compose_config
from flowerbed.continual.pool import TrainingPool
from flowerbed.continual.rows import TokenRows
from flowerbed.privacy.banded import BandsError, accounted, prefix_error, strategy
from flowerbed.privacy.correlated_noise import CorrelatedNoise
from flowerbed.privacy.cyclic import Cycle, record_classes
from flowerbed.privacy.guard import PrivacyGuard

BANDED = ("privacy=dp_sgd", "privacy.mechanism=banded")


def toeplitz(coefficients: list[float], steps: int) -> np.ndarray:
    """The strategy C as a dense lower-triangular matrix."""
    matrix = np.zeros((steps, steps))
    for j, c in enumerate(coefficients):
        matrix += np.diag(np.full(steps - j, c), -j)
    return matrix


def test_the_noise_of_every_step_is_c_inverse_of_the_fresh_draws_across_rounds(tmp_path):
    """Three rounds of four steps, the buffers saved and read back between them, give
    the same noise as solving C w = z for all twelve steps at once."""
    coefficients, steps, size = strategy(4, 12), 12, 50
    fresh = torch.randn(steps, size, dtype=torch.float64)
    shaped, release = [], ""
    for round_ in (1, 2, 3):
        noise = CorrelatedNoise.resume(coefficients, tmp_path, round_, release)
        for t in range(4 * (round_ - 1), 4 * round_):
            shaped.append(noise.shape_(fresh[t].clone()))
        release = f"nonce-{round_}"
        noise.save(tmp_path, round_, release)
    expected = np.linalg.solve(toeplitz(coefficients, steps), fresh.numpy())
    assert np.allclose(torch.stack(shaped).numpy(), expected, atol=1e-10)
    assert len(list((tmp_path / "correlated-noise").iterdir())) == 2  # the newest two kept
    mode = (tmp_path / "correlated-noise" / "round-00003.safetensors").stat().st_mode & 0o777
    assert mode == 0o600


def test_the_strategy_lowers_the_noise_in_the_running_sums_and_one_band_is_dp_sgd():
    assert strategy(1, 100) == [1.0]
    assert prefix_error([1.0], 100) == pytest.approx(101 / 2)
    assert prefix_error(strategy(4, 100), 100) < 0.5 * prefix_error([1.0], 100)
    draw = torch.randn(1000)
    assert torch.equal(CorrelatedNoise([1.0]).shape_(draw.clone()), draw)
    assert accounted(0.01, 20, 1) == (0.01, 20)


def test_banded_steps_are_accounted_as_dp_sgd_at_bands_times_the_rate_over_a_band_of_the_steps():
    assert accounted(0.01, 20, 4) == (0.04, 5)
    assert accounted(0.4, 20, 4) == (1.0, 5)
    with pytest.raises(BandsError, match=r"not a multiple of privacy\.bands=3"):
        accounted(0.01, 20, 3)


def test_its_epsilon_is_what_jax_privacys_accountant_gives_banded_noise_with_cyclic_sampling(
    tmp_path,
):
    """The ledger's ε after three rounds of 20 steps, 4 bands, 1,000 records, batch 10,
    against jax-privacy's own accountant for BandMF with cyclic Poisson sampling (PLD)."""
    from jax_privacy.accounting import accountants, analysis

    cfg = compose_config(*BANDED, "privacy.bands=4", "train.local_steps=20").privacy
    guard = PrivacyGuard(cfg, tmp_path, cfg.budget, None)
    planned = [(0.01, 20)] * 3
    for round_ in (1, 2, 3):
        permit = guard.permit(round_, f"request {round_}", 0.01, 20, planned)
        assert permit.bands == 4 and permit.sample_rate == 0.04
        spent = guard.record(permit)
    library = analysis.DpsgdTrainingAccountant(accountants.PldAccountantConfig())
    params = analysis.DpParams(
        noise_multipliers=permit.noise_multiplier,
        num_samples=1000,
        delta=cfg.delta,
        batch_size=10,
        cycle_length=4,
    )
    assert spent == pytest.approx(library.compute_epsilon(60, params), rel=0.02)
    assert spent == pytest.approx(8.0, abs=0.02)  # calibrated to the target, like DP-SGD


def test_each_step_samples_one_class_of_records_and_a_record_keeps_its_class():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 257, size=(400, 16), dtype=np.int64)
    pool = TrainingPool(TokenRows.whole([tokens], [0]), cycle=Cycle(4, b"k" * 32))
    classes = record_classes(tokens, b"k" * 32, 4)
    assert set(np.bincount(classes)) and min(np.bincount(classes)) > 70  # about 100 each
    sampler = np.random.default_rng(1)
    sizes = []
    for step in range(40):
        batch, _ = pool.poisson_batch(8, sampler)
        assert (record_classes(batch, b"k" * 32, 4) == step % 4).all()
        sizes.append(len(batch))
    assert 6 < np.mean(sizes) < 10  # the expected batch is kept: 4x the rate on a quarter
    replayed = TrainingPool(
        TokenRows.whole([tokens[200:]], [0]),
        TokenRows.whole([tokens[:200]], [0]),
        replay_fraction=0.5,
        cycle=Cycle(4, b"k" * 32),
    )
    batch, _ = replayed.poisson_batch(8, sampler)
    assert (record_classes(batch, b"k" * 32, 4) == 0).all()  # buffered rows: the same classes


def test_bands_must_fit_the_rounds_and_auto_needs_a_target():
    with pytest.raises(ConfigError, match=r"bands=3 does not divide train\.local_steps=20"):
        compose_config(*BANDED, "privacy.bands=3", "train.local_steps=20")
    with pytest.raises(ConfigError, match=r"bands=auto chooses the bands"):
        compose_config(*BANDED, "privacy.target_epsilon=null", "privacy.noise_multiplier=1.0")
    with pytest.raises(ConfigError, match="use it with privacy=dp_sgd"):
        compose_config(
            "privacy=user_level", "privacy.mechanism=banded", "federation.transport_dtype=fp32"
        )
    with pytest.raises(ConfigError, match=r"train\.sync_rounds=0"):
        compose_config(*BANDED, "train.sync_rounds=1", "privacy.bands=1")


def test_kept_noise_made_under_other_sampling_classes_is_not_continued(tmp_path):
    """A new node secret (or seed) moves records between classes: continuing the kept noise
    would let a record that moved take part twice within a band (found by review)."""
    coefficients = strategy(4, 12)
    noise = CorrelatedNoise.resume(coefficients, tmp_path, 1, "", classes="old-key")
    for _ in range(4):
        noise.shape_(torch.randn(10))
    noise.save(tmp_path, 1, "release-1")
    same = CorrelatedNoise.resume(coefficients, tmp_path, 2, "release-1", classes="old-key")
    moved = CorrelatedNoise.resume(coefficients, tmp_path, 2, "release-1", classes="new-key")
    assert len(same.history) == 3 and moved.history == []


def test_a_ledger_rebuilt_from_its_mirror_keeps_the_lifes_mechanism(tmp_path):
    """A new state directory for the same data recounts the mirror's releases, and with
    them the strategy fixed for life (found by review: it fell back to dp_sgd)."""
    from flowerbed.privacy.ledger import PrivacyLedger

    cfg = compose_config(*BANDED, "privacy.bands=4", "train.local_steps=20").privacy
    mirror = tmp_path / "mirror.json"
    guard = PrivacyGuard(cfg, tmp_path / "first", cfg.budget, mirror)
    guard.record(guard.permit(1, "request 1", 0.01, 20, [(0.01, 20)] * 3))
    rebuilt = PrivacyLedger.open(
        tmp_path / "second" / "ledger.json", cfg.delta, "prv", "sequence", mirror
    )
    assert rebuilt.mechanism == "banded" and rebuilt.coefficients == guard.ledger.coefficients


def test_the_planner_spends_what_a_banded_clients_ledger_records():
    from flowerbed.privacy.accounting import noise_for_epsilon
    from flowerbed.privacy.planning import plan

    planned = plan(2736, 8, rounds=6, local_steps=20, delta=1e-5, target_epsilon=8.0, bands=5)
    assert planned.steps == 120  # the steps taken; accounted as 24 at 5x the rate
    assert planned.noise_multiplier == noise_for_epsilon(8.0, 1e-5, 5 * 8 / 2736, 24)
    assert 7.9 < planned.epsilon <= 8.0
