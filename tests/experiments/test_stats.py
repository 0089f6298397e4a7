from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import orjson
import pytest
from scipy import integrate
from scipy import stats as sps

from banditgate import keys
from banditgate.intervals import WeightSums, cressie_read_interval
from banditgate.redis import Redis
from experiments.sequential import SequentialComparison, Units
from tests.experiments.conftest import Control, decision, spec_doc, write_decisions, write_joined


def arm(stats: dict[str, Any], name: str) -> dict[str, Any]:
    return next(a for a in stats["arms"] if a["arm"] == name)


async def test_bandit_stats_match_hand_computed_values(
    control: Control, name: str, redis: Redis
) -> None:
    await control.call("POST", "/v1/experiments", spec_doc(name))
    d1 = decision(name, "a", [0.8, 0.2], event_id="1", latency_ms=10)
    d2 = decision(name, "a", [0.6, 0.4], event_id="2", latency_ms=30, status=502)
    d3 = decision(name, "b", [0.5, 0.5], event_id="3", latency_ms=5)
    d4 = decision(name, "b", [0.7, 0.3], event_id="4", latency_ms=15)
    d5 = decision(name, "b", [0.0, 1.0], event_id="5", forced=True, latency_ms=25)
    await write_decisions(redis, name, [d1, d2, d3])
    await write_decisions(redis, name, [d4, d5])
    await write_joined(redis, name, d1, 1.0)
    await write_joined(redis, name, d2, 0.0, rewarded=False)
    await write_joined(redis, name, d3, 0.5)
    await write_joined(redis, name, d4, 1.0)
    await write_joined(redis, name, d5, 1.0)
    await redis.hset(
        keys.join_counters(name),
        mapping={"rewards_received": 7, "rewards_late": 2, "rewards_orphaned": 1},
    )

    stats = await control.get(f"/v1/experiments/{name}/stats")
    a, b = arm(stats, "a"), arm(stats, "b")

    assert stats["totals"]["decisions"] == 5
    assert stats["totals"]["randomized"] == 4
    assert stats["totals"]["forced"] == 1
    assert (a["decisions"], b["decisions"]) == (2, 3)
    assert (a["traffic_share"], b["traffic_share"]) == pytest.approx((2 / 5, 3 / 5))
    assert (a["errors"], b["errors"]) == (1, 0)
    assert a["mean_latency_ms"] == pytest.approx(20.0)
    # Mean action probability: over the 4 randomised decisions, chosen or not.
    assert a["mean_action_probability"] == pytest.approx((0.8 + 0.6 + 0.5 + 0.7) / 4)
    assert b["mean_action_probability"] == pytest.approx((0.2 + 0.4 + 0.5 + 0.3) / 4)
    # Mean sampled probability: p(chosen) over the decisions that chose the arm.
    assert a["mean_sampled_probability"] == pytest.approx((0.8 + 0.6) / 2)
    assert b["mean_sampled_probability"] == pytest.approx((0.5 + 0.3) / 2)

    assert (a["joined"], b["joined"]) == (2, 3)
    assert (a["rewarded"], b["rewarded"]) == (1, 3)
    assert (a["reward_n"], b["reward_n"]) == (2, 2)  # the forced example is not inference data
    assert stats["reward"]["binary"] is False  # 0.5 was seen
    assert a["mean_reward"] == pytest.approx(0.5)
    # Student t, n = 2: s² = 0.5, se = 0.5, t(0.975, 1) = 12.7062
    assert a["mean_reward_ci"] == pytest.approx(
        [0.5 - 12.7062 * 0.5, 0.5 + 12.7062 * 0.5], abs=1e-3
    )
    assert b["mean_reward"] == pytest.approx(0.75)
    assert b["mean_reward_ci"] == pytest.approx(
        [0.75 - 12.7062 * 0.25, 0.75 + 12.7062 * 0.25], abs=1e-3
    )
    # Self-normalised IPS: a: w = 1.25, 1.6667 -> V = 1.25 / 2.9167; b: w = 2, 3.3333.
    assert a["value"] == pytest.approx(1.25 / (1.25 + 1 / 0.6))
    # Its interval: Cressie-Read from the arm's weight sums over all 4 randomised examples
    # (w = 0 where another arm was chosen); with 4 examples it is the whole reward range.
    w, r = np.array([1.25, 1 / 0.6, 0.0, 0.0]), np.array([1.0, 0.0, 0.0, 0.0])
    assert a["value_interval"] == "cressie_read"
    assert a["value_ci"] == pytest.approx(list(cressie_read_interval(WeightSums.of(w, r))))
    assert a["value_ci"] == [0.0, 1.0]
    assert b["value"] == pytest.approx((2 * 0.5 + 1 / 0.3) / (2 + 1 / 0.3))
    # Regret: best IPS value (b, 0.8125) minus the mean obtained (2.5 / 4) over 4 examples.
    assert stats["regret"]["best_arm"] == "b"
    assert stats["regret"]["per_decision"] == pytest.approx(0.8125 - 0.625)
    assert stats["regret"]["total"] == pytest.approx(4 * (0.8125 - 0.625))
    assert stats["prob_best_method"] == "normal_ips"
    assert a["prob_best"] + b["prob_best"] == pytest.approx(1.0)
    assert b["prob_best"] > a["prob_best"]
    assert a["rolling_mean_reward"] == pytest.approx(0.5)

    assert stats["rewards"]["received"] == 7
    assert stats["rewards"]["late"] == 2
    assert stats["rewards"]["orphaned"] == 1
    assert stats["rewards"]["duplicate"] == 0  # never written: reads as 0
    assert stats["srm"]["method"] == "logged_propensities"
    assert stats["srm"]["flagged"] is False
    assert "too little traffic" in stats["srm"]["reason"]
    assert stats["sequential"] is None  # bandits have no A/B test


async def test_binary_rewards_use_wilson_and_beta(
    control: Control, name: str, redis: Redis
) -> None:
    await control.call("POST", "/v1/experiments", spec_doc(name, mode="ab"))
    decisions = [decision(name, arm_, [0.5, 0.5], mode="ab") for arm_ in "aaaabbbb"]
    await write_decisions(redis, name, decisions)
    for d, reward in zip(decisions, [1, 1, 1, 0, 1, 0, 0, 0], strict=True):
        await write_joined(redis, name, d, float(reward), rewarded=bool(reward))
    stats = await control.get(f"/v1/experiments/{name}/stats")
    a, b = arm(stats, "a"), arm(stats, "b")
    assert stats["reward"]["binary"] is True
    assert stats["prob_best_method"] == "beta"
    # Wilson, n = 4, p = 0.75, z = 1.96: centre (p + z²/2n) / (1 + z²/n), half-width below.
    z = 1.959963984540054
    centre = (0.75 + z * z / 8) / (1 + z * z / 4)
    half = z / (1 + z * z / 4) * math.sqrt(0.75 * 0.25 / 4 + z * z / 64)
    assert a["mean_reward"] == 0.75
    assert a["mean_reward_ci"] == pytest.approx([centre - half, centre + half])
    # P(Beta(4, 2) > Beta(2, 4)) by quadrature; the API uses 20 000 seeded draws (sd ~0.002).
    exact, _ = integrate.quad(lambda x: sps.beta.pdf(x, 4, 2) * sps.beta.cdf(x, 2, 4), 0, 1)
    assert exact == pytest.approx(113 / 126)
    assert a["prob_best"] == pytest.approx(exact, abs=0.01)
    assert a["prob_best"] + b["prob_best"] == pytest.approx(1.0)
    assert stats["regret"]["best_arm"] == "a"
    assert stats["regret"]["per_decision"] == pytest.approx(0.75 - 0.5)
    assert a["configured_weight"] == 0.5
    seq = stats["sequential"]
    assert seq["control"] == "a"
    assert seq["comparisons"][0]["arm"] == "b"
    assert seq["comparisons"][0]["units"] == 8


def _fair_bandit_decisions(
    name: str, rng: np.random.Generator, n: int, skew: float = 0.0
) -> list[Any]:
    out = []
    for i in range(n):
        p_a = float(rng.uniform(0.1, 0.9))
        chosen = "a" if rng.random() < p_a else "b"
        if skew and chosen == "b" and rng.random() < skew:
            chosen = "a"  # a logging or assignment bug that loses some of b's traffic to a
        out.append(decision(name, chosen, [p_a, 1 - p_a], event_id=str(i)))
    return out


@pytest.mark.parametrize(("skew", "flagged"), [(0.0, False), (0.1, True)])
async def test_srm_against_logged_propensities(
    control: Control, name: str, redis: Redis, skew: float, flagged: bool
) -> None:
    await control.call("POST", "/v1/experiments", spec_doc(name))
    rng = np.random.default_rng(42)
    await write_decisions(redis, name, _fair_bandit_decisions(name, rng, 3000, skew))
    stats = await control.get(f"/v1/experiments/{name}/stats")
    srm = stats["srm"]
    assert srm["method"] == "logged_propensities"
    assert srm["n"] == 3000
    assert srm["df"] == 1
    assert srm["flagged"] is flagged
    if flagged:
        assert srm["p_value"] < 0.001
        assert srm["observed"]["a"] > srm["expected"]["a"]
    else:
        assert srm["p_value"] > 0.01


@pytest.mark.parametrize(("counts", "flagged"), [((510, 490), False), ((560, 440), True)])
async def test_srm_against_configured_weights(
    control: Control, name: str, redis: Redis, counts: tuple[int, int], flagged: bool
) -> None:
    await control.call("POST", "/v1/experiments", spec_doc(name, mode="ab"))
    rows = [decision(name, "a", [0.5, 0.5], mode="ab")] * counts[0]
    rows += [decision(name, "b", [0.5, 0.5], mode="ab")] * counts[1]
    # Rule-pinned traffic (pmf one-hot) is not part of the configured split.
    rows += [decision(name, "b", [0.0, 1.0], mode="ab")] * 50
    await write_decisions(redis, name, rows)
    stats = await control.get(f"/v1/experiments/{name}/stats")
    srm = stats["srm"]
    assert srm["method"] == "configured_weights"
    assert srm["n"] == 1000
    assert srm["n_other_pmf"] == 50
    assert srm["expected"] == {"a": 500.0, "b": 500.0}
    chi2 = sum((o - 500) ** 2 / 500 for o in counts)
    assert srm["chi2"] == pytest.approx(chi2)
    assert srm["flagged"] is flagged


async def test_traffic_at_weight_zero_is_flagged(control: Control, name: str, redis: Redis) -> None:
    await control.call("POST", "/v1/experiments", spec_doc(name, mode="ab"))
    await control.call("POST", f"/v1/experiments/{name}/end", {"winner": "a"})
    rows = [decision(name, "a", [1.0, 0.0], mode="ab")] * 100 + [
        decision(name, "b", [1.0, 0.0], mode="ab")
    ]
    await write_decisions(redis, name, rows)
    stats = await control.get(f"/v1/experiments/{name}/stats")
    assert stats["srm"]["flagged"] is True
    assert "probability 0" in stats["srm"]["reason"]


async def test_sequential_block_equals_the_test_fed_directly(
    control: Control, name: str, redis: Redis
) -> None:
    await control.call("POST", "/v1/experiments", spec_doc(name, mode="ab", arms=("a", "b", "c")))
    rng = np.random.default_rng(9)
    means = {"a": 0.2, "b": 0.35, "c": 0.2}
    direct = {t: SequentialComparison("a", t, 0.0, 1.0) for t in ("b", "c")}
    rows = []
    for i in range(1500):
        chosen = ["a", "b", "c"][int(rng.integers(3))]
        reward = float(rng.random() < means[chosen])
        rows.append(
            (
                decision(
                    name, chosen, [1 / 3] * 3, arms=("a", "b", "c"), mode="ab", event_id=str(i)
                ),
                reward,
            )
        )
    await write_decisions(redis, name, [d for d, _ in rows])
    for d, reward in rows:
        await write_joined(redis, name, d, reward, rewarded=reward > 0)
    for treatment, comparison in direct.items():
        in_t = np.array([float(d["chosen"] == treatment) for d, _ in rows])
        in_c = np.array([float(d["chosen"] == "a") for d, _ in rows])
        reward = np.array([r for _, r in rows])
        comparison.update(Units(in_t, in_c, reward, np.full(1500, 1 / 3), np.full(1500, 1 / 3)))

    stats = await control.get(f"/v1/experiments/{name}/stats")
    seq = stats["sequential"]
    assert seq["alpha_per_comparison"] == pytest.approx(0.025)  # Bonferroni over two comparisons
    by_arm = {c["arm"]: c for c in seq["comparisons"]}
    for treatment, comparison in direct.items():
        expected = comparison.result(0.025)
        assert by_arm[treatment]["effect"] == pytest.approx(expected["effect"])
        assert by_arm[treatment]["p_value"] == pytest.approx(expected["p_value"])
        assert by_arm[treatment]["ci"] == pytest.approx(expected["ci"])
    assert by_arm["b"]["significant"] is True  # 0.35 vs 0.20 over ~500 units each
    assert by_arm["c"]["significant"] is False


async def test_stats_window_and_incremental_reads(
    control: Control, name: str, redis: Redis
) -> None:
    await control.call("POST", "/v1/experiments", spec_doc(name))
    now = int(time.time() * 1000)
    old = decision(name, "a", [0.5, 0.5], ts_ms=now - 3_600_000)
    await redis.xadd(
        keys.decisions(name), {"n": 1, "b": orjson.dumps([old])}, id=f"{now - 3_600_000}-0"
    )
    await write_decisions(redis, name, [decision(name, "b", [0.5, 0.5])])
    status, everything = await control.call("GET", f"/v1/experiments/{name}/stats")
    assert everything["totals"]["decisions"] == 2
    status, recent = await control.call("GET", f"/v1/experiments/{name}/stats?window_s=600")
    assert recent["totals"]["decisions"] == 1
    assert arm(recent, "b")["decisions"] == 1
    # A second read only adds what was appended since.
    await write_decisions(redis, name, [decision(name, "b", [0.5, 0.5])] * 3)
    status, again = await control.call("GET", f"/v1/experiments/{name}/stats")
    assert again["totals"]["decisions"] == 5
    status, bad = await control.call("GET", f"/v1/experiments/{name}/stats?window_s=-1")
    assert status == 422
    assert bad["error"]["field"] == "query.window_s"


async def test_timeseries_places_decisions_in_their_steps(
    control: Control, name: str, redis: Redis
) -> None:
    await control.call("POST", "/v1/experiments", spec_doc(name))
    now = int(time.time() * 1000)
    step = 60_000
    current = now - now % step
    early = current - 5 * step + 1000  # five steps back
    rows = [decision(name, "a", [0.8, 0.2], ts_ms=early)] * 3 + [
        decision(name, "b", [0.8, 0.2], ts_ms=early)
    ]
    late = [decision(name, "b", [0.4, 0.6], ts_ms=now)] * 2
    await redis.xadd(keys.decisions(name), {"n": 4, "b": orjson.dumps(rows)}, id=f"{early}-0")
    await write_decisions(redis, name, late)
    for seq, d in enumerate(rows[:2]):
        await redis.xadd(keys.joined(name), _joined_fields(d, 1.0), id=f"{early + 10}-{seq}")
    status, series = await control.call(
        "GET", f"/v1/experiments/{name}/timeseries?window_s=600&step_s=60&rolling_s=180"
    )
    assert status == 200, series
    assert series["step_s"] == 60
    assert series["t"][-1] == current
    index = series["t"].index(current - 5 * step)
    a, b = series["arms"]["a"], series["arms"]["b"]
    assert (a["decisions"][index], b["decisions"][index]) == (3, 1)
    assert a["share"][index] == pytest.approx(0.75)
    assert a["action_p"][index] == pytest.approx(0.8)
    assert a["sampled_p"][index] == pytest.approx(0.8)
    assert b["sampled_p"][index] == pytest.approx(0.2)
    assert a["mean_reward"][index] == pytest.approx(1.0)
    assert a["rolling_reward"][index + 2] == pytest.approx(1.0)  # within 3 steps of the rewards
    assert a["rolling_reward"][index + 3] is None  # rolled out of the window
    assert b["decisions"][-1] == 2
    assert b["share"][-1] == pytest.approx(1.0)
    assert b["action_p"][-1] == pytest.approx(0.6)
    assert a["share"][index + 1] is None  # no traffic in that step


def _joined_fields(d: Any, reward: float) -> dict[str, Any]:
    return {"d": orjson.dumps(d), "r": repr(reward), "rw": b"1", "n": 1, "jt": d["ts_ms"]}


async def test_timeseries_starts_at_the_first_decision_with_latency_errors_and_regret(
    control: Control, name: str, redis: Redis
) -> None:
    await control.call("POST", "/v1/experiments", spec_doc(name))
    now = int(time.time() * 1000)
    step = 60_000
    current = now - now % step
    first = current - 3 * step + 500  # 3 steps back in a one-hour window
    fast = [decision(name, "a", [0.5, 0.5], ts_ms=first, latency_ms=2.0 + i % 3) for i in range(98)]
    slow = [decision(name, "a", [0.5, 0.5], ts_ms=first, latency_ms=400.0) for _ in range(2)]
    failing = [decision(name, "b", [0.5, 0.5], ts_ms=first, status=503) for _ in range(4)]
    fine = [decision(name, "b", [0.5, 0.5], ts_ms=first) for _ in range(4)]
    batch = fast + slow + failing + fine
    await redis.xadd(
        keys.decisions(name), {"n": len(batch), "b": orjson.dumps(batch)}, id=f"{first}-0"
    )
    # Rewards: a earns 1 on 10 examples, b earns 0 on 10 (a is the best arm).
    for seq, d in enumerate(fast[:10] + fine + failing + fine[:2]):
        reward = 1.0 if d["chosen"] == "a" else 0.0
        await redis.xadd(keys.joined(name), _joined_fields(d, reward), id=f"{first + 10}-{seq}")
    series = await control.get(f"/v1/experiments/{name}/timeseries?window_s=3600&step_s=60")
    assert series["t"][0] == current - 3 * step  # not an hour of empty steps before it
    assert series["first_decision_ms"] == first
    assert series["window_start_ms"] < series["start_ms"] == series["t"][0]
    a, b = series["arms"]["a"], series["arms"]["b"]
    assert a["decisions"][0] == 100 and b["decisions"][0] == 8
    assert b["error_rate"][0] == pytest.approx(0.5) and a["error_rate"][0] == 0.0
    assert 2.5 <= a["latency_p50_ms"][0] <= 5.0  # in the (2.5 ms, 5 ms] bucket
    assert 250.0 <= a["latency_p99_ms"][0] <= 500.0  # the two slow calls
    assert a["error_rate"][1] is None and a["latency_p50_ms"][1] is None  # an empty step
    cumulative = series["cumulative"]
    assert cumulative["best_arm"] == "a"
    assert cumulative["best_value"] == pytest.approx(1.0)
    assert cumulative["uniform_value"] == pytest.approx(0.5)
    assert cumulative["n"][0] == 20 and cumulative["n"][-1] == 20
    assert cumulative["mean_reward"][0] == pytest.approx(0.5)
    assert cumulative["regret"][-1] == pytest.approx(10.0)  # 20 * 1.0 - 10 earned
    assert cumulative["uniform_regret"][-1] == pytest.approx(10.0)


async def test_segments_break_reward_down_by_a_context_feature(
    control: Control, name: str, redis: Redis
) -> None:
    """a wins on mobile, b on desktop: the breakdown shows it, with IPS values."""
    await control.call("POST", "/v1/experiments", spec_doc(name))
    now = int(time.time() * 1000)
    seq = 0
    for device, winner in (("mobile", "a"), ("desktop", "b")):
        for arm in ("a", "b"):
            for i in range(8):
                d = decision(name, arm, [0.25, 0.75], ts_ms=now)
                d["context"] = {"x-device": device, "t.len": str(i % 2)}
                reward = 1.0 if arm == winner else 0.0
                await redis.xadd(keys.joined(name), _joined_fields(d, reward), id=f"{now}-{seq}")
                seq += 1
    listed = await control.get(f"/v1/experiments/{name}/segments")
    assert {(f["name"], f["examples"]) for f in listed["features"]} == {
        ("x-device", 32),
        ("t.len", 32),
    }
    assert listed["segments"] == []
    result = await control.get(f"/v1/experiments/{name}/segments?feature=x-device")
    assert result["examples"] == 32 and result["truncated"] is False
    by = {s["segment"]: s for s in result["segments"]}
    assert set(by) == {"mobile", "desktop"}
    assert by["mobile"]["best_arm"] == "a" and by["desktop"]["best_arm"] == "b"
    assert by["mobile"]["arms"]["a"] == {"n": 8, "mean_reward": 1.0, "randomized": 8, "value": 1.0}
    assert by["desktop"]["arms"]["a"]["mean_reward"] == 0.0
    missing = await control.get(f"/v1/experiments/{name}/segments?feature=nothing")
    assert [s["segment"] for s in missing["segments"]] == ["(none)"]
    status, error = await control.call("GET", f"/v1/experiments/{name}/segments?limit=0")
    assert status == 422 and error["error"]["field"] == "query.limit"
    status, _ = await control.call("GET", "/v1/experiments/no-such/segments")
    assert status == 404
