from __future__ import annotations

import numpy as np
import pytest

from bench.aa_test import Scenario, simulate
from experiments.sequential import SequentialComparison, Units


@pytest.mark.parametrize(
    "scenario",
    [
        Scenario("50/50 Bernoulli(0.1)", 0.5, 0.1, 0.1),
        Scenario("80/20 Bernoulli(0.3)", 0.8, 0.3, 0.3),
        Scenario("90/10 Bernoulli(0.02)", 0.9, 0.02, 0.02),
        Scenario("50/50 continuous", 0.5, 0.4, 0.4, reward="continuous"),
    ],
    ids=lambda s: s.name,
)
def test_aa_stopped_at_first_significant_look_is_wrong_at_most_alpha(scenario: Scenario) -> None:
    out = simulate(scenario, sims=400, units=2000, seed=11, alpha=0.05, chunk=500)
    assert out.sequential_rate <= 0.05
    # The same data, peeked at with a fixed-horizon z-test, is wrong far more often:
    # the simulation is sharp enough to see the inflation the sequential test avoids.
    assert out.naive_rate > 0.12


def test_a_real_difference_is_found() -> None:
    out = simulate(Scenario("0.10 vs 0.20", 0.5, 0.20, 0.10), sims=200, units=3000, seed=5)
    assert out.sequential_rate >= 0.8


def _units(rng: np.random.Generator, n: int, weight: float, mean_a: float, mean_b: float) -> Units:
    in_a = (rng.random(n) < weight).astype(np.float64)
    reward = (rng.random(n) < np.where(in_a == 1, mean_a, mean_b)).astype(np.float64)
    p_a = np.full(n, weight)
    return Units(in_a, 1 - in_a, reward, p_a, 1 - p_a)


def test_incremental_updates_equal_one_pass_and_the_sequence_covers_the_truth() -> None:
    rng = np.random.default_rng(3)
    units = _units(rng, 6000, 0.5, 0.30, 0.20)
    whole = SequentialComparison("b", "a", 0.0, 1.0)
    whole.update(units)
    pieces = SequentialComparison("b", "a", 0.0, 1.0)
    for start, end in [(0, 1), (1, 700), (700, 2049), (2049, 6000)]:
        pieces.update(units.slice(start, end))
    one, many = whole.result(), pieces.result()
    assert one.keys() == many.keys()
    for key, value in one.items():
        if isinstance(value, float | list):
            assert many[key] == pytest.approx(value, rel=1e-9), key
        else:
            assert many[key] == value, key
    assert one["units"] == 6000
    assert one["n_treatment"] + one["n_control"] == 6000
    lo, hi = one["ci"]
    assert lo < 0.10 < hi
    assert lo > 0  # 0.30 vs 0.20 over 6000 units is a clear difference
    assert one["significant"] is True
    assert one["p_value"] < 0.05
    assert one["mean_treatment"] == pytest.approx(0.30, abs=0.03)
    assert one["effect"] == pytest.approx(0.10, abs=0.03)


def test_no_difference_keeps_zero_in_the_sequence() -> None:
    rng = np.random.default_rng(4)
    comparison = SequentialComparison("b", "a", 0.0, 1.0)
    comparison.update(_units(rng, 4000, 0.3, 0.25, 0.25))
    result = comparison.result()
    lo, hi = result["ci"]
    assert lo < 0 < hi
    assert result["significant"] is False
    assert 0.05 < result["p_value"] <= 1.0


def test_rewards_on_the_bounds_keep_wealth_finite() -> None:
    n = 500
    in_a = np.tile([1.0, 0.0], n // 2)
    comparison = SequentialComparison("b", "a", -1.0, 1.0)
    comparison.update(
        Units(in_a, 1 - in_a, np.where(in_a == 1, 1.0, -1.0), np.full(n, 0.5), np.full(n, 0.5))
    )
    result = comparison.result()
    assert np.isfinite(comparison.state.max_log_k).all()
    assert result["significant"] is True
    assert result["effect"] == pytest.approx(2.0, abs=0.1)
