"""Epsilon from flowerbed's accountants against Google's dp-accounting (RDP and PLD)."""

from __future__ import annotations

import dp_accounting
import pytest
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from flowerbed.config import ConfigError, compose_config
from flowerbed.privacy.accounting import epsilon
from flowerbed.privacy.ledger import LedgerError, PrivacyLedger
from flowerbed.privacy.planning import plan


def reference(history, delta: float, method: str) -> float:
    """Epsilon of a DP-SGD history computed by dp-accounting alone."""
    from opacus.accountants.rdp import RDPAccountant

    event = dp_accounting.ComposedDpEvent(
        [
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
            )
            for sigma, q, steps in history
        ]
    )
    if method == "rdp":
        accountant = rdp_privacy_accountant.RdpAccountant(orders=RDPAccountant.DEFAULT_ALPHAS)
    else:
        accountant = pld_privacy_accountant.PLDAccountant()
    accountant.compose(event)
    return accountant.get_epsilon(delta)


CASES = [
    [(1.5, 0.04, 2250)],  # Opacus's own test case: RDP 7.329, PRV about 6.78
    [(1.0, 0.01, 1000)],
    [(0.8, 0.02, 300), (1.2, 0.05, 200)],  # a history whose data and noise changed
]


def test_the_known_case_gives_the_published_values():
    history = [(1.5, 0.04, 2250)]
    assert epsilon(history, 1e-5, "rdp") == pytest.approx(7.32911117143, rel=1e-6)
    assert epsilon(history, 1e-5, "prv") == pytest.approx(6.77, rel=0.01)


@pytest.mark.parametrize("history", CASES)
def test_rdp_matches_dp_accounting(history):
    assert epsilon(history, 1e-5, "rdp") == pytest.approx(reference(history, 1e-5, "rdp"), rel=0.01)


@pytest.mark.parametrize("history", CASES)
def test_prv_matches_dp_accounting_pld(history):
    assert epsilon(history, 1e-5, "prv") == pytest.approx(reference(history, 1e-5, "pld"), rel=0.01)


def test_planned_noise_spends_the_target_over_the_whole_life():
    result = plan(1000, 40, rounds=45, local_steps=50, delta=1e-5, target_epsilon=8.0)
    assert result.steps == 2250 and result.sample_rate == 0.04
    assert 7.9 < result.epsilon <= 8.0
    # Google's dp-accounting agrees that this noise spends the target, and no less would do.
    history = [(result.noise_multiplier, 0.04, 2250)]
    assert reference(history, 1e-5, "pld") == pytest.approx(8.0, rel=0.01)
    assert reference([(0.97 * result.noise_multiplier, 0.04, 2250)], 1e-5, "pld") > 8.0


def test_the_ledger_is_cumulative_and_reloads(tmp_path):
    path = tmp_path / "privacy_ledger.json"
    ledger = PrivacyLedger.open(path, 1e-5, "rdp")
    first = ledger.write_ahead(path, 1, "r1", (1.0, 0.05, 100), "secret").epsilon
    second = ledger.write_ahead(path, 2, "r2", (1.0, 0.05, 100), "secret").epsilon
    again = PrivacyLedger.open(path, 1e-5, "rdp")
    assert second > first and again.epsilon == second and again.steps == 200
    assert second == pytest.approx(epsilon([(1.0, 0.05, 200)], 1e-5, "rdp"))


def test_the_guard_computes_a_rounds_epsilon_once_and_records_that_value(tmp_path, monkeypatch):
    from flowerbed.privacy import ledger as ledger_module
    from flowerbed.privacy.guard import PrivacyGuard

    cfg = compose_config(
        "privacy=dp_sgd",
        "privacy.accountant=rdp",
        "privacy.target_epsilon=null",
        "privacy.noise_multiplier=1.0",
        "privacy.max_epsilon=50",
    ).privacy
    computed = []
    monkeypatch.setattr(
        ledger_module, "epsilon", lambda *args: computed.append(args) or epsilon(*args)
    )
    guard = PrivacyGuard(cfg, tmp_path, cfg.budget, None)
    spent = guard.record(guard.permit(1, "request", 0.05, 100, [(0.05, 100)]))
    assert len(computed) == 1  # the budget check's value is the one recorded
    assert spent == epsilon([(1.0, 0.05, 100)], cfg.delta, "rdp")
    assert PrivacyLedger.open(tmp_path / "privacy_ledger.json", cfg.delta, "rdp").epsilon == spent


def test_a_ledger_keeps_its_delta(tmp_path):
    path = tmp_path / "privacy_ledger.json"
    PrivacyLedger.open(path, 1e-5, "prv").write_ahead(path, 1, "r", (1.0, 0.05, 10), "secret")
    with pytest.raises(LedgerError, match="was kept with delta=1e-05"):
        PrivacyLedger.open(path, 1e-6, "prv")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["privacy=dp_sgd", "privacy.target_epsilon=null"],
            "give privacy.target_epsilon or privacy.noise_multiplier, one of them",
        ),
        (["privacy=dp_sgd", "privacy.noise_multiplier=1.0"], "not both"),
        (["privacy=dp_sgd", "privacy.delta=2"], "privacy.delta must be in (0, 1)"),
        (
            ["privacy=user_level", "privacy.noise_multiplier=null"],
            "privacy=user_level needs privacy.noise_multiplier",
        ),
    ],
)
def test_privacy_settings_are_checked(overrides, message):
    with pytest.raises(ConfigError) as err:
        compose_config(*overrides)
    assert message in str(err.value)


@pytest.mark.parametrize("mode", ["ghost", "bookkeeping"])
def test_norm_only_clipping_refuses_tied_embeddings_at_the_start(mode):
    with pytest.raises(ConfigError, match=f"{mode} cannot train tied embeddings"):
        compose_config(
            "model.tie_embeddings=true", "privacy=dp_sgd", f"privacy.grad_sample_mode={mode}"
        )


def test_noise_for_a_schedule_of_rates_spends_the_target_and_merging_changes_nothing():
    from flowerbed.privacy.accounting import merged, noise_for_schedule

    schedule = [(0.02, 50), (0.02, 50), (0.05, 100), (0.03, 100)]
    sigma = noise_for_schedule(8.0, 1e-5, schedule, "rdp")
    history = [(sigma, q, n) for q, n in schedule]
    assert 7.99 <= epsilon(history, 1e-5, "rdp") <= 8.0
    assert len(merged(history)) == 3
    from opacus.accountants import PRVAccountant

    unmerged = PRVAccountant()
    unmerged.history = history  # four entries, as a ledger has them
    assert epsilon(history, 1e-5) == pytest.approx(unmerged.get_epsilon(1e-5), rel=1e-6)


def test_a_calibration_that_cannot_settle_stops_with_a_clear_error():
    from flowerbed.privacy.accounting import CalibrationError, noise_for_schedule

    schedule = [(0.02, 50), (0.05, 100)]
    with pytest.raises(CalibrationError, match=r"did not settle within 0\.0 after 5 halvings"):
        noise_for_schedule(8.0, 1e-5, schedule, "rdp", tolerance=0.0, max_iterations=5)


def test_one_rdp_curve_per_mechanism_gives_opacus_own_numbers_to_the_bit():
    from opacus.accountants import PRVAccountant
    from opacus.accountants.analysis import rdp
    from opacus.accountants.utils import get_noise_multiplier

    from flowerbed.privacy.accounting import noise_for_epsilon

    original = rdp.compute_rdp
    history = [(1.1, 0.01, 200), (0.9, 0.03, 100)]
    opacus_own = PRVAccountant()
    opacus_own.history = list(history)
    assert epsilon(history, 1e-5) == opacus_own.get_epsilon(delta=1e-5)
    expected = get_noise_multiplier(
        target_epsilon=4.0, target_delta=1e-5, sample_rate=0.05, steps=50, accountant="prv"
    )
    assert noise_for_epsilon(4.0, 1e-5, 0.05, 50) == expected
    assert rdp.compute_rdp is original  # the cache lives only inside a computation
