from __future__ import annotations

import math

import numpy as np
import pytest

from banditgate.intervals import WeightSums, cressie_read_interval
from banditgate.spec import GateSpec
from trainer.gate import EvaluationWindow, judge
from trainer.ope import (
    GATE_INTERVAL,
    PAIRED_INTERVAL,
    Z95,
    Bounds,
    bootstrap_t,
    dr,
    ips,
    paired_difference,
    snips,
)


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


def _rare_action_log(
    rng: np.random.Generator, n: int, floor: float = 0.01
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """10 actions, the logger puts the floor on all but action 0; the target always picks 3."""
    k = 10
    mu = np.full(k, floor)
    mu[0] = 1 - floor * (k - 1)
    means = np.linspace(0.1, 0.9, k)
    actions = rng.choice(k, size=n, p=mu)
    rewards = (rng.random(n) < means[actions]).astype(float)
    target = (actions == 3).astype(float)
    return rewards, mu[actions], target, actions, float(means[3])


def test_cressie_read_holds_at_small_propensities_where_the_normal_interval_does_not() -> None:
    hits = {"normal": 0, "cressie_read": 0, "dr_cressie_read": 0}
    reps = 300
    for seed in range(reps):
        rng = np.random.default_rng(seed)
        r, p, q, actions, truth = _rare_action_log(rng, 600)
        model = np.full(10, 0.5)  # an uninformed reward model
        normal = snips(r, p, q)
        bounded = snips(r, p, q, interval="cressie_read", bounds=Bounds(wmax=100.0))
        doubly = dr(
            r,
            p,
            q,
            model[actions],
            np.full(r.size, 0.5),
            interval="cressie_read",
            bounds=Bounds(wmax=100.0),
        )
        assert bounded.interval == "cressie_read" and bounded.lo <= bounded.value <= bounded.hi
        hits["normal"] += normal.lo <= truth <= normal.hi
        hits["cressie_read"] += bounded.lo <= truth <= bounded.hi
        hits["dr_cressie_read"] += doubly.lo <= truth <= doubly.hi
    assert hits["normal"] / reps < 0.92
    assert hits["cressie_read"] / reps >= 0.94
    assert hits["dr_cressie_read"] / reps >= 0.94


def test_cressie_read_is_close_to_the_normal_interval_with_moderate_weights() -> None:
    rng = np.random.default_rng(5)
    n = 20_000
    chosen = rng.random(n) < 0.5
    r = (rng.random(n) < np.where(chosen, 0.3, 0.6)).astype(float)
    w = np.where(chosen, 2.0, 0.0)
    lo, hi = cressie_read_interval(WeightSums.of(w, r), wmax=2.0)
    normal = snips(r, np.full(n, 0.5), chosen.astype(float))
    assert lo < normal.value < hi
    assert lo == pytest.approx(normal.lo, abs=0.002) and hi == pytest.approx(normal.hi, abs=0.002)
    # The interval stays within the rewards' range, whatever the sample.
    lo, hi = cressie_read_interval(WeightSums.of(np.array([2.0, 0.0]), np.array([1.0, 1.0])))
    assert 0.0 <= lo <= hi <= 1.0


def test_paired_cressie_read_keeps_the_pairing() -> None:
    rng = np.random.default_rng(8)
    r, p, q, _, _ = _rare_action_log(rng, 2000, floor=0.05)
    rhat = np.full(r.size, 0.5)
    bounds = Bounds(wmax=20.0)
    same = paired_difference(r, p, q, q, rhat, rhat, rhat, interval="cressie_read", bounds=bounds)
    assert same.value == 0.0 and same.interval == "cressie_read"
    # Identical policies: only the allowance for an unseen large weight remains, far
    # less than the two policies' own intervals subtracted from each other.
    assert same.lo == pytest.approx(-same.hi) and 0 < same.hi < 0.1
    unpaired = dr(r, p, q, rhat, rhat, interval="cressie_read", bounds=bounds)
    assert same.hi - same.lo < 0.5 * 2 * (unpaired.hi - unpaired.lo)


def test_bootstrap_t_agrees_with_the_t_interval_on_normal_data() -> None:
    rng = np.random.default_rng(9)
    x = rng.normal(1.0, 2.0, size=400)
    lo, hi = bootstrap_t(x)
    half = 1.966 * x.std(ddof=1) / math.sqrt(x.size)
    assert lo == pytest.approx(x.mean() - half, abs=0.05)
    assert hi == pytest.approx(x.mean() + half, abs=0.05)


def test_the_gate_names_its_interval() -> None:
    window = EvaluationWindow()
    rng = np.random.default_rng(3)
    for _ in range(300):
        arm = int(rng.random() < 0.5)
        window.add(
            reward=float(rng.random() < (0.7 if arm else 0.3)),
            logged_prob=0.5,
            candidate_prob=0.95 if arm else 0.05,
            current_prob=0.5,
            reward_hat_logged=0.5,
            candidate_reward_hat=0.5,
            current_reward_hat=0.5,
        )
    numbers = window.estimates()
    assert numbers["difference"]["dr"]["interval"] == PAIRED_INTERVAL
    for name, method in GATE_INTERVAL.items():
        assert numbers["candidate"][name]["interval"] == method
    verdict = judge(GateSpec(min_examples=100), numbers, len(window))
    assert verdict.publish
    assert verdict.reason.endswith(f"({PAIRED_INTERVAL} interval)")
    verdict = judge(GateSpec(min_examples=100, rule="unpaired", margin=0.0), numbers, len(window))
    assert verdict.reason.endswith(f"({GATE_INTERVAL['dr']} interval)")
