from __future__ import annotations

import math

import numpy as np
import pytest

from trainer.ope import Z95, dr, ips, paired_difference, snips


def test_estimators_match_hand_computed_values() -> None:
    r = [1.0, 0.0, 1.0, 1.0]
    p = [0.5, 0.5, 0.25, 1.0]
    q = [1.0, 0.0, 0.5, 0.5]
    # w = [2, 0, 2, 0.5]; w r = [2, 0, 2, 0.5]
    est = ips(r, p, q)
    assert est.value == pytest.approx(4.5 / 4)
    sd = np.std([2, 0, 2, 0.5], ddof=1)
    assert est.hi - est.value == pytest.approx(Z95 * sd / 2)
    assert est.n == 4
    assert snips(r, p, q).value == pytest.approx(4.5 / 4.5)
    rhat_logged = [0.5, 0.5, 0.5, 0.5]
    rhat_target = [0.6, 0.4, 0.6, 0.6]
    # dr_i = rhat_target + w (r - rhat_logged) = [0.6+1, 0.4+0, 0.6+1, 0.6+0.25]
    assert dr(r, p, q, rhat_logged, rhat_target).value == pytest.approx(
        (1.6 + 0.4 + 1.6 + 0.85) / 4
    )
    assert paired_difference(r, p, q, q).value == 0.0


def test_edge_cases_and_bad_input() -> None:
    assert math.isnan(ips([], [], []).value)
    one = ips([1.0], [0.5], [1.0])
    assert one.value == 2.0 and one.lo == -math.inf
    with pytest.raises(ValueError, match="logged_prob"):
        ips([1.0], [0.0], [1.0])
    with pytest.raises(ValueError, match="length"):
        ips([1.0, 0.0], [0.5], [1.0])
    with pytest.raises(ValueError, match="finite"):
        dr([math.nan], [0.5], [1.0], [0.0], [0.0])


def test_estimators_are_unbiased_in_simulation() -> None:
    """Uniform logging over 3 arms, a fixed target policy: the mean estimate over
    seeds lies within the interval of the true value, and intervals cover ~95%."""
    true_means = np.array([0.2, 0.5, 0.7])
    target = np.array([0.1, 0.2, 0.7])
    truth = float(true_means @ target)
    values: dict[str, list[float]] = {"ips": [], "snips": [], "dr": []}
    covered = {"ips": 0, "dr": 0}
    seeds = 300
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        n = 400
        arms = rng.integers(0, 3, size=n)
        rewards = (rng.random(n) < true_means[arms]).astype(float)
        logged = np.full(n, 1 / 3)
        q = target[arms]
        # A deliberately biased reward model: DR stays unbiased through the correction term.
        model = true_means + 0.1
        estimates = {
            "ips": ips(rewards, logged, q),
            "snips": snips(rewards, logged, q),
            "dr": dr(rewards, logged, q, model[arms], np.full(n, float(model @ target))),
        }
        for key, est in estimates.items():
            values[key].append(est.value)
            if key in covered and est.lo <= truth <= est.hi:
                covered[key] += 1
    for key, series in values.items():
        mean = float(np.mean(series))
        se = float(np.std(series, ddof=1)) / math.sqrt(seeds)
        assert abs(mean - truth) < Z95 * se + 1e-3, (key, mean, truth)
    for key, hits in covered.items():
        assert 0.92 <= hits / seeds <= 0.98, (key, hits / seeds)
