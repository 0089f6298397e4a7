"""Guardrail metrics from the decisions and joined streams, and the verdict between two arms."""

from __future__ import annotations

from typing import Any

import orjson

from banditgate import keys
from banditgate.events import decision_batch_fields
from banditgate.spec import Guardrails
from experiments.guardrails import ArmMetrics, collect, judge, p99


def decision(arm: str, status: int = 200, latency_ms: float = 5.0, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": f"e-{arm}-{latency_ms}",
        "experiment": "x",
        "ts_ms": 0,
        "policy_version": 0,
        "mode": "canary",
        "context": {},
        "arms": ["base", "new"],
        "pmf": [0.9, 0.1],
        "chosen": arm,
        "forced": False,
        "status": status,
        "latency_ms": latency_ms,
        **extra,
    }


async def test_collect_counts_errors_timeouts_and_p99_per_arm_within_the_window(redis, name):
    stream = keys.decisions(name)
    early = [decision("base", latency_ms=999.0), decision("new", status=500)]
    await redis.xadd(stream, decision_batch_fields(early), id="1000-0")  # type: ignore[arg-type]
    inside = [decision("base", latency_ms=float(i)) for i in range(1, 101)]
    inside += [
        decision("new", status=200, latency_ms=10.0),
        decision("new", status=503, latency_ms=12.0),
        decision("new", status=504, latency_ms=2000.0, error="arm 'new' did not answer within 2s"),
        decision("new", status=502, latency_ms=1.0, error="arm 'new' failed: connection refused"),
        decision("new", status=404, latency_ms=3.0),
        decision("other", status=500),
    ]
    # Split over more entries than one XRANGE page holds.
    for i, item in enumerate(inside):
        await redis.xadd(stream, decision_batch_fields([item]), id=f"{2000 + i}-0")  # type: ignore[arg-type]
    await redis.xadd(stream, decision_batch_fields([decision("new", status=500)]), id="9000-0")  # type: ignore[arg-type]

    metrics = await collect(redis, name, since_ms=2000, until_ms=8999, arms=["base", "new"])
    assert set(metrics) == {"base", "new"}
    assert metrics["base"] == ArmMetrics(requests=100, errors=0, p99_ms=99.0)
    assert metrics["new"].requests == 5
    assert metrics["new"].errors == 3  # 503, the timeout and the refused connection; 404 is not
    assert metrics["new"].p99_ms == 2000.0
    everything = await collect(redis, name, since_ms=0)
    assert everything["new"].requests == 7 and everything["other"].errors == 1


async def test_collect_reads_rewards_from_the_joined_stream(redis, name):
    for i, (arm, reward) in enumerate([("base", 1.0), ("base", 0.0), ("new", 0.5), ("base", 1.0)]):
        await redis.xadd(
            keys.joined(name),
            {
                "d": orjson.dumps(decision(arm)),
                "r": repr(reward),
                "rw": "1",
                "n": 1,
                "jt": 5000 + i,
            },
            id=f"{5000 + i}-0",
        )
    metrics = await collect(redis, name, since_ms=5001, rewards=True)
    assert metrics["base"].rewards == 2 and metrics["base"].mean_reward == 0.5
    assert metrics["new"].rewards == 1 and metrics["new"].mean_reward == 0.5
    assert metrics["base"].requests == 0


def test_p99_is_a_latency_some_request_had():
    assert p99([]) == 0.0
    assert p99([7.0]) == 7.0
    assert p99([float(i) for i in range(1, 201)]) == 198.0


def test_judge_names_every_shortfall_and_passes_healthy_arms():
    g = Guardrails(min_samples=50)
    verdict = judge(
        ArmMetrics(requests=20), ArmMetrics(requests=5), g, baseline_name="b", candidate_name="c"
    )
    assert verdict.outcome == "insufficient"
    assert verdict.shortfalls == ["c has 5/50 requests", "b has 20/50 requests"]
    fine = judge(
        ArmMetrics(requests=100, errors=1, p99_ms=20),
        ArmMetrics(requests=100, errors=2, p99_ms=25),
        g,
        baseline_name="b",
        candidate_name="c",
    )
    assert fine.outcome == "pass"
    assert fine.reason == (
        "error rate c 2.0% (2/100) vs b 1.0% (1/100); p99 c 25.0 ms vs b 20.0 ms"
    )


def test_judge_breaches_on_error_rate_above_the_allowed_delta():
    g = Guardrails(min_samples=50, max_error_rate_delta=0.02)
    verdict = judge(
        ArmMetrics(requests=100, errors=1),
        ArmMetrics(requests=100, errors=4),
        g,
        baseline_name="b",
        candidate_name="c",
    )
    assert verdict.outcome == "breach"
    assert verdict.breaches == ["error rate c 4.0% (4/100) vs b 1.0% (1/100), allowed +2.0%"]


def test_errors_conclusive_before_min_samples_breach_early():
    """A canary ejected by the routers after consecutive failures gets few requests; its
    errors so far already show it breaks the guardrail, so waiting is not needed."""
    g = Guardrails(min_samples=50, max_error_rate_delta=0.02)
    failing = judge(
        ArmMetrics(requests=160),
        ArmMetrics(requests=6, errors=6),
        g,
        baseline_name="b",
        candidate_name="c",
    )
    assert failing.outcome == "breach"
    assert failing.breaches[0].startswith("error rate c 6/6: at least 4")
    # Too few errors to be sure (one failure in six, or four of four): wait for traffic.
    for errors, requests in ((1, 6), (4, 4)):
        unsure = judge(
            ArmMetrics(requests=160),
            ArmMetrics(requests=requests, errors=errors),
            g,
            baseline_name="b",
            candidate_name="c",
        )
        assert unsure.outcome == "insufficient", (errors, requests)
