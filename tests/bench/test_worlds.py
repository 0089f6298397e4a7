"""The world suite's runner on two tiny worlds: the report's shape and its sanity."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bench.worlds.library import WORLDS, World
from bench.worlds.report import table
from bench.worlds.runner import run_world

SEEDS = [0, 1]


def tiny_change() -> World:
    before = {"all": {"m1": 0.7, "m2": 0.3}}
    after = {"all": {"m1": 0.2, "m2": 0.3}}
    return replace(
        WORLDS["change-degrade"],
        name="tiny-change",
        requests=1_200,
        change_at=600,
        means=lambda t: before if t < 600 else after,
        delay=(5, 50),
        window=100,
    )


@pytest.fixture(scope="module")
def reports() -> dict[str, dict]:
    stationary = replace(WORLDS["tier3x3"], requests=1_000)
    candidates = [("default", {})]
    return {
        "stationary": run_world(stationary, SEEDS, candidates),
        "change": run_world(tiny_change(), SEEDS, candidates),
    }


def test_every_policy_is_scored_for_every_seed(reports: dict[str, dict]) -> None:
    for report in reports.values():
        assert report["seeds"] == SEEDS and len(report["per_seed"]) == len(SEEDS)
        assert set(report["policies"]) == {
            "uniform",
            "best-fixed",
            "oracle",
            "thompson",
            "ucb",
            "thompson-discounted",
            "default",
        }
        for metrics in report["policies"].values():
            assert metrics["reward"]["worst"] <= metrics["reward"]["mean"]
        assert max(seed["default"]["publishes"] for seed in report["per_seed"]) >= 1


def test_the_oracle_bounds_every_policy_and_uniform_is_the_arm_mean(
    reports: dict[str, dict],
) -> None:
    for report in reports.values():
        for seed in report["per_seed"]:
            oracle = seed["oracle"]["reward"]
            assert seed["oracle"]["of_oracle"] == 1.0
            for name, metrics in seed.items():
                assert 0.0 <= metrics["reward"] <= oracle + 1e-12, name
                assert metrics["of_oracle"] == pytest.approx(metrics["reward"] / oracle)
    # tiny-change: uniform earns the mean of the two arms before and after the change.
    change = reports["change"]["per_seed"][0]
    assert change["uniform"]["reward"] == pytest.approx((0.5 * 600 + 0.25 * 600) / 1_200)
    assert change["oracle"]["reward"] == pytest.approx((0.7 * 600 + 0.3 * 600) / 1_200)
    assert change["best-fixed"]["reward"] == pytest.approx(0.5 * 0.7 + 0.5 * 0.2)


def test_lock_in_and_recovery_are_measured(reports: dict[str, dict]) -> None:
    for name, metrics in reports["change"]["per_seed"][0].items():
        if name in ("uniform", "best-fixed", "oracle"):
            continue
        assert 0.0 <= metrics["best_share_last"] <= 1.0
        assert 200 <= metrics["recovery"] <= 600  # a full trailing window, at most the rest
        assert 0.0 < metrics["after_change_of_oracle"] <= 1.0
    assert reports["stationary"]["per_seed"][0]["default"]["recovery"] is None
    text = table(reports["change"])
    assert text.startswith("### tiny-change")
    assert "| default |" in text and "recovery (requests)" in text
