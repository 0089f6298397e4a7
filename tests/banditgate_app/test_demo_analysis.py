"""The demo report's cumulative curves: exact, from every arm's known answer."""

from __future__ import annotations

import pytest

from banditgate_app.demo.analysis import Served, cumulative


def served(i: int, kind: str, arm: str, correct: dict[str, bool]) -> Served:
    return Served(i, str(i), arm, float(correct[arm]), kind, correct, ts_ms=i, latency_ms=1.0)


def test_cumulative_reward_and_regret_against_the_baselines():
    # "a" is right on short texts, "b" on long ones; the bandit picked a, a, b, a.
    rows = [
        served(0, "short", "a", {"a": True, "b": False}),
        served(1, "long", "a", {"a": False, "b": True}),
        served(2, "long", "b", {"a": False, "b": True}),
        served(3, "short", "a", {"a": True, "b": False}),
    ]
    out = cumulative(rows, ["a", "b"])
    assert out["x"] == [1, 2, 3, 4]
    assert out["bandit"] == pytest.approx([1.0, 0.5, 2 / 3, 0.75])
    assert out["oracle"] == [1.0, 1.0, 1.0, 1.0]
    assert out["uniform"] == pytest.approx([0.5, 0.5, 0.5, 0.5])
    assert out["best_arm_name"] == "a"  # a tie: the first arm
    assert out["best_arm"] == pytest.approx([1.0, 0.5, 1 / 3, 0.5])
    assert out["bandit_regret"] == [0.0, 1.0, 1.0, 1.0]
    assert out["uniform_regret"] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert out["oracle_regret"] == [0.0] * 4


def test_long_runs_are_thinned_to_a_few_hundred_points():
    rows = [served(i, "k", "a", {"a": i % 2 == 0, "b": True}) for i in range(10_001)]
    out = cumulative(rows, ["a", "b"], points=400)
    assert len(out["x"]) <= 401 and out["x"][-1] == 10_001
    assert out["best_arm_name"] == "b" and out["best_arm_regret"][-1] == 0.0
