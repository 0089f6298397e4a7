from __future__ import annotations

import numpy as np
import pytest

from bench.aa_test import Scenario, simulate
from experiments.sequential import BLOCK, SequentialComparison, Units, bettors


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


# -- the betting machinery against references on iid data ------------------------------------

TRUNCATION = 0.5


def _predictable(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Running mean and variance before each observation (one pseudo-observation at 1/2, 1/4)."""
    t = np.arange(1, x.size + 1)
    mean = (0.5 + np.cumsum(x)) / (t + 1)
    var = (0.25 + np.cumsum((x - mean) ** 2)) / (t + 1)
    return np.append(0.5, mean[:-1]), np.append(0.25, var[:-1])


def _mine(x: np.ndarray, grid: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """log K_t(m) after every observation, (t, grid), fed in BLOCK-sized pieces."""
    mean_prev, var_prev = _predictable(x)
    plus = np.zeros((grid.size, scales.size + 1))
    minus = plus.copy()
    paths = []
    for start in range(0, x.size, BLOCK):
        piece = slice(start, start + BLOCK)
        log_k, plus, minus = bettors(
            x[piece],
            np.zeros_like(x[piece]),
            np.ones_like(x[piece]),
            mean_prev[piece],
            var_prev[piece],
            grid,
            scales=scales,
            truncation=TRUNCATION,
            log_k_plus=plus,
            log_k_minus=minus,
        )
        paths.append(log_k)
    return np.concatenate(paths)


def test_the_mixture_is_the_product_formula_of_the_paper() -> None:
    """K_t(m) = 1/2 mean_j prod_i (1 + l+_ij (x_i - m)) + 1/2 mean_j prod_i (1 - l-_ij (x_i - m)),
    Waudby-Smith & Ramdas (2024) eq. (24)-(26), written out term by term."""
    rng = np.random.default_rng(21)
    x = rng.beta(2, 5, size=300)
    scales = np.array([0.01, 0.05, 0.2])
    mean_prev, var_prev = _predictable(x)
    for m in (0.2, 0.285, 0.4):
        plus = np.ones(scales.size + 1)
        minus = np.ones(scales.size + 1)
        expected = []
        for i, xi in enumerate(x):
            kelly = (mean_prev[i] - m) / (var_prev[i] + (mean_prev[i] - m) ** 2)
            up = np.append(scales / var_prev[i], max(kelly, 0.0))
            down = np.append(scales / var_prev[i], max(-kelly, 0.0))
            plus *= 1 + np.minimum(up, TRUNCATION / m) * (xi - m)
            minus *= 1 - np.minimum(down, TRUNCATION / (1 - m)) * (xi - m)
            expected.append(0.5 * plus.mean() + 0.5 * minus.mean())
        got = np.exp(_mine(x, np.array([m]), scales)[:, 0])
        assert got == pytest.approx(np.asarray(expected), rel=1e-9)


def test_matches_confseq_diversified_betting_martingale_and_its_confidence_sequence() -> None:
    """The same bets given to confseq's reference implementation give the same wealth."""
    if not hasattr(np, "float_"):
        # confseq 0.0.11 annotates with np.float_, which NumPy 2 removed.
        np.float_ = np.float64  # type: ignore[attr-defined]
    confseq = pytest.importorskip("confseq.betting")
    strategies = pytest.importorskip("confseq.betting_strategies")
    rng = np.random.default_rng(22)
    x = rng.beta(3, 4, size=700)
    scales = np.array([0.005, 0.02, 0.08, 0.25])
    _, var_prev = _predictable(x)

    def fixed(j: int):  # type: ignore[no-untyped-def]
        return lambda data, m: scales[j] / var_prev

    def kelly(sign: float):  # type: ignore[no-untyped-def]
        return lambda data, m: np.maximum(sign * strategies.lambda_aKelly(data, m), 0.0)

    def reference(data: np.ndarray, m: float) -> np.ndarray:
        return confseq.diversified_betting_mart(
            data,
            m,
            lambdas_fns_positive=[fixed(j) for j in range(scales.size)] + [kelly(1.0)],
            lambdas_fns_negative=[fixed(j) for j in range(scales.size)] + [kelly(-1.0)],
            convex_comb=True,
            theta=0.5,
            trunc_scale=TRUNCATION,
            m_trunc=True,
        )

    grid = np.linspace(0.01, 0.99, 99)
    mine = _mine(x, grid, scales)
    for g, m in enumerate(grid):
        with np.errstate(over="ignore", divide="ignore"):
            theirs = np.log(reference(x, m))
        finite = np.isfinite(theirs)  # far from the mean their product overflows
        assert mine[finite, g] == pytest.approx(theirs[finite], rel=1e-9, abs=1e-9), m
        assert (mine[~finite, g] > 700).all()
    # The confidence sequence at each time: the grid points not rejected at level 0.05.
    lo, hi = confseq.cs_from_martingale(x, reference, breaks=100, alpha=0.05)
    kept = mine <= np.log(20.0)
    for t in (50, 200, 699):
        inside = grid[kept[t]]
        assert inside.min() - 0.01 == pytest.approx(lo[t], abs=1e-9)
        assert inside.max() + 0.01 == pytest.approx(hi[t], abs=1e-9)
        assert inside.min() < 3 / 7 < inside.max()
