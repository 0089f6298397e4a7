"""Guardrail metrics per arm over a window of the logs, and the verdict that compares two arms.

The decisions stream is the source: every router process logs each decision with
its status and latency, and stream ids are millisecond timestamps, so an XRANGE
by time is one window of everyone's traffic. Rewards come from the joined stream
(decision plus aggregated reward), windowed by arrival.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import orjson

from banditgate import keys
from banditgate.contracts import BatchField, JoinedField
from banditgate.intervals import wilson_interval
from banditgate.redis import Redis
from banditgate.spec import Guardrails

PAGE = 200

Outcome = Literal["pass", "breach", "insufficient"]


@dataclass
class ArmMetrics:
    requests: int = 0
    errors: int = 0
    p99_ms: float = 0.0
    rewards: int = 0
    reward_sum: float = 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def mean_reward(self) -> float:
        return self.reward_sum / self.rewards if self.rewards else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArmMetrics:
        return cls(
            **{k: data[k] for k in ("requests", "errors", "p99_ms", "rewards", "reward_sum")}
        )


def is_error(decision: dict[str, Any]) -> bool:
    """5xx answers, and calls that got none: timeouts (504) and connection failures (502)."""
    return int(decision.get("status", 0)) >= 500 or "error" in decision


def p99(latencies: list[float]) -> float:
    """Nearest-rank 99th percentile: a latency some request really had."""
    if not latencies:
        return 0.0
    ordered = sorted(latencies)
    return ordered[max(math.ceil(0.99 * len(ordered)) - 1, 0)]


@dataclass
class _Accumulator:
    requests: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    rewards: int = 0
    reward_sum: float = 0.0

    def metrics(self) -> ArmMetrics:
        return ArmMetrics(
            self.requests, self.errors, p99(self.latencies), self.rewards, self.reward_sum
        )


async def _entries(
    redis: Redis, key: str, since_ms: int, until_ms: int | None
) -> Iterable[dict[bytes, bytes]]:
    low = f"{since_ms}-0"
    high = str(until_ms) if until_ms is not None else "+"
    out: list[dict[bytes, bytes]] = []
    while True:
        page: list[Any] = await redis.xrange(key, min=low, max=high, count=PAGE) or []
        out.extend(fields for _, fields in page)
        if len(page) < PAGE:
            return out
        last = page[-1][0]
        low = "(" + (last.decode() if isinstance(last, bytes) else str(last))


async def collect(
    redis: Redis,
    experiment: str,
    *,
    since_ms: int,
    until_ms: int | None = None,
    arms: Iterable[str] | None = None,
    rewards: bool = False,
) -> dict[str, ArmMetrics]:
    """Per-arm traffic, errors and p99 latency of decisions logged in [since_ms, until_ms];
    with `rewards`, also the joined examples that arrived in that window."""
    wanted = set(arms) if arms is not None else None
    acc: dict[str, _Accumulator] = {}
    for fields in await _entries(redis, keys.decisions(experiment), since_ms, until_ms):
        for decision in orjson.loads(fields[BatchField.RECORDS.raw]):
            arm = decision["chosen"]
            if wanted is not None and arm not in wanted:
                continue
            slot = acc.setdefault(arm, _Accumulator())
            slot.requests += 1
            slot.errors += is_error(decision)
            slot.latencies.append(float(decision.get("latency_ms", 0.0)))
    if rewards:
        for fields in await _entries(redis, keys.joined(experiment), since_ms, until_ms):
            arm = orjson.loads(fields[JoinedField.DECISION.raw])["chosen"]
            if wanted is not None and arm not in wanted:
                continue
            slot = acc.setdefault(arm, _Accumulator())
            slot.rewards += 1
            slot.reward_sum += float(fields[JoinedField.REWARD.raw])
    return {arm: slot.metrics() for arm, slot in acc.items()}


@dataclass
class Verdict:
    outcome: Outcome
    breaches: list[str] = field(default_factory=list)
    shortfalls: list[str] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)

    @property
    def reason(self) -> str:
        if self.outcome == "breach":
            return "; ".join(self.breaches)
        if self.outcome == "insufficient":
            return "too little traffic: " + "; ".join(self.shortfalls)
        return "; ".join(self.passed)


EARLY_MIN_ERRORS = 5
EARLY_Z = 2.576  # 99%, one-sided the bound is stricter still


def wilson_lower(successes: int, n: int, z: float = EARLY_Z) -> float:
    """The Wilson score interval's lower end for a binomial proportion (0 when n is 0)."""
    return wilson_interval(successes, n, z)[0] if n else 0.0


def _pct(rate: float) -> str:
    return f"{rate * 100:.1f}%"


def judge(
    baseline: ArmMetrics | None,
    candidate: ArmMetrics | None,
    guardrails: Guardrails,
    *,
    baseline_name: str,
    candidate_name: str,
) -> Verdict:
    """Compare the candidate with the baseline. A breach wins over a shortfall: a guardrail
    with enough samples that fails is acted on even while another one still waits for data.

    Latency breaches only when the candidate's p99 exceeds both the ratio and the
    absolute delta, so 1 ms against 2 ms is not a regression.
    """
    base = baseline or ArmMetrics()
    cand = candidate or ArmMetrics()
    g = guardrails
    verdict = Verdict("pass")
    short = [
        f"{name} has {m.requests}/{g.min_samples} requests"
        for name, m in ((candidate_name, cand), (baseline_name, base))
        if m.requests < g.min_samples
    ]
    if short:
        verdict.shortfalls.extend(short)
        # Errors can be conclusive before min_samples: a canary the routers ejected after
        # consecutive failures gets few requests, and waiting for more would never end.
        low = wilson_lower(cand.errors, cand.requests)
        if cand.errors >= EARLY_MIN_ERRORS and low > base.error_rate + g.max_error_rate_delta:
            verdict.breaches.append(
                f"error rate {candidate_name} {cand.errors}/{cand.requests}: at least "
                f"{_pct(low)} with 99% confidence, against {baseline_name} "
                f"{_pct(base.error_rate)} +{_pct(g.max_error_rate_delta)} allowed"
            )
    else:
        delta = cand.error_rate - base.error_rate
        errors = (
            f"error rate {candidate_name} {_pct(cand.error_rate)} ({cand.errors}/{cand.requests})"
            f" vs {baseline_name} {_pct(base.error_rate)} ({base.errors}/{base.requests})"
        )
        if delta > g.max_error_rate_delta + 1e-12:
            verdict.breaches.append(f"{errors}, allowed +{_pct(g.max_error_rate_delta)}")
        else:
            verdict.passed.append(errors)
        latency = (
            f"p99 {candidate_name} {cand.p99_ms:.1f} ms vs {baseline_name} {base.p99_ms:.1f} ms"
        )
        too_slow = (
            cand.p99_ms > base.p99_ms * g.max_p99_latency_ratio
            and cand.p99_ms - base.p99_ms > g.max_p99_latency_delta_ms
        )
        if too_slow:
            allowed = f"x{g.max_p99_latency_ratio:g} or +{g.max_p99_latency_delta_ms:g} ms"
            verdict.breaches.append(f"{latency}, allowed {allowed}")
        else:
            verdict.passed.append(latency)
    if g.min_reward_delta is not None:
        short = [
            f"{name} has {m.rewards}/{g.min_reward_samples} rewards"
            for name, m in ((candidate_name, cand), (baseline_name, base))
            if m.rewards < g.min_reward_samples
        ]
        if short:
            verdict.shortfalls.extend(short)
        else:
            rewards = (
                f"mean reward {candidate_name} {cand.mean_reward:.4f} ({cand.rewards})"
                f" vs {baseline_name} {base.mean_reward:.4f} ({base.rewards})"
            )
            if cand.mean_reward - base.mean_reward < g.min_reward_delta - 1e-12:
                verdict.breaches.append(f"{rewards}, allowed {g.min_reward_delta:+g}")
            else:
                verdict.passed.append(rewards)
    if verdict.breaches:
        verdict.outcome = "breach"
    elif verdict.shortfalls:
        verdict.outcome = "insufficient"
    return verdict
