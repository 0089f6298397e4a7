"""What a demo run earned, against the baselines it could have run on the same traffic."""

from __future__ import annotations

import bisect
import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from banditgate.intervals import wilson_interval


@dataclass
class Served:
    """One request as the traffic generator saw it, with every arm's counterfactual."""

    index: int
    event_id: str
    arm: str
    reward: float
    kind: str
    correct: dict[str, bool]
    ts_ms: int
    latency_ms: float
    pmf: list[float] = field(default_factory=list)
    arms: list[str] = field(default_factory=list)
    policy_version: int = 0


def summarise(served: list[Served], arms: list[str]) -> dict[str, Any]:
    n = len(served)
    if n == 0:
        raise ValueError("no requests were served")
    avg = sum(s.reward for s in served) / n
    per_arm_mean = {a: sum(s.correct[a] for s in served) / n for a in arms}
    kinds = sorted({s.kind for s in served})
    best_for_kind = {}
    for kind in kinds:
        rows = [s for s in served if s.kind == kind]
        best_for_kind[kind] = max(arms, key=lambda a: sum(r.correct[a] for r in rows) / len(rows))
    arm_rows = {}
    for arm in arms:
        routed = [s for s in served if s.arm == arm]
        successes = sum(s.reward for s in routed)
        lo, hi = wilson_interval(successes, len(routed))
        arm_rows[arm] = {
            "share": len(routed) / n,
            "requests": len(routed),
            "mean_reward": successes / len(routed) if routed else None,
            "ci95": [lo, hi] if routed else None,
        }
    return {
        "requests": n,
        "avg_reward": avg,
        "ab_reward": sum(sum(s.correct[a] for a in arms) / len(arms) for s in served) / n,
        "best_arm_reward": max(per_arm_mean.values()),
        "best_arm": max(per_arm_mean, key=per_arm_mean.__getitem__),
        "oracle_reward": sum(s.correct[best_for_kind[s.kind]] for s in served) / n,
        "oracle_arm_by_kind": best_for_kind,
        "arms": arm_rows,
        "latency_ms": {
            "p50": statistics.median(s.latency_ms for s in served),
            "p99": sorted(s.latency_ms for s in served)[max(0, int(0.99 * n) - 1)],
        },
    }


def reward_to_policy(
    joined: list[tuple[str, int]], versions: list[dict[str, Any]], first_served_ms: dict[int, int]
) -> list[float]:
    """Seconds from each reward's join to the first decision made by a policy that learned it.

    `joined`: (joined-stream entry id, join time ms) in stream order; `versions`: the
    published versions with `version` and `trained_through` (an entry id);
    `first_served_ms`: for each version, its first decision's server time.
    """
    ordered = sorted(
        (_stream_key(v["trained_through"]), first_served_ms[v["version"]])
        for v in versions
        if v.get("trained_through") and v["version"] in first_served_ms
    )
    keys = [key for key, _ in ordered]
    served_at = [ts for _, ts in ordered]
    # A later version may reach routers first (an earlier one served no request):
    # what counts is the earliest serving version that includes the example.
    earliest_from = served_at[:]
    for i in range(len(earliest_from) - 2, -1, -1):
        earliest_from[i] = min(earliest_from[i], earliest_from[i + 1])
    latencies = []
    for entry_id, joined_ms in joined:
        position = bisect.bisect_left(keys, _stream_key(entry_id))
        if position < len(keys):
            latencies.append(max(0.0, (earliest_from[position] - joined_ms) / 1000))
    return latencies


def _stream_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def timeline(served: list[Served], arms: list[str], buckets: int = 60) -> dict[str, Any]:
    """Per time bucket: traffic split, mean action probability, mean sampled probability."""
    n = len(served)
    size = max(1, math.ceil(n / buckets))
    out: dict[str, Any] = {
        "x": [],
        "share": {a: [] for a in arms},
        "action_prob": {a: [] for a in arms},
        "sampled_prob": {a: [] for a in arms},
    }
    for start in range(0, n, size):
        chunk = served[start : start + size]
        out["x"].append(start + len(chunk))
        for arm in arms:
            chosen = [s for s in chunk if s.arm == arm]
            out["share"][arm].append(len(chosen) / len(chunk))
            probs = [s.pmf[s.arms.index(arm)] for s in chunk if s.pmf and arm in s.arms]
            out["action_prob"][arm].append(sum(probs) / len(probs) if probs else None)
            sampled = [s.pmf[s.arms.index(arm)] for s in chosen if s.pmf and arm in s.arms]
            out["sampled_prob"][arm].append(sum(sampled) / len(sampled) if sampled else None)
    window = 100
    rolling, total = [], 0.0
    for i, s in enumerate(served):
        total += s.reward
        if i >= window:
            total -= served[i - window].reward
        rolling.append(total / min(i + 1, window))
    out["rolling_reward"] = {"x": list(range(1, n + 1)), "y": rolling}
    out["cumulative"] = cumulative(served, arms)
    return out


def cumulative(served: list[Served], arms: list[str], points: int = 400) -> dict[str, Any]:
    """Cumulative average reward and cumulative regret against the per-context oracle, for
    the bandit and the baselines on the same requests (every arm's answer is known here)."""
    n = len(served)
    by_kind: dict[str, dict[str, int]] = {}
    for s in served:
        counts = by_kind.setdefault(s.kind, dict.fromkeys(arms, 0))
        for arm in arms:
            counts[arm] += bool(s.correct[arm])
    oracle_arm = {kind: max(arms, key=counts.__getitem__) for kind, counts in by_kind.items()}
    best_arm = max(arms, key=lambda a: sum(c[a] for c in by_kind.values()))
    step = max(1, math.ceil(n / points))
    out: dict[str, Any] = {"x": [], "best_arm_name": best_arm}
    policies = ("bandit", "uniform", "best_arm", "oracle")
    for name in policies:
        out[name] = []
        out[f"{name}_regret"] = []
    totals = dict.fromkeys(policies, 0.0)
    for i, s in enumerate(served, start=1):
        totals["bandit"] += s.reward
        totals["uniform"] += sum(s.correct[a] for a in arms) / len(arms)
        totals["best_arm"] += s.correct[best_arm]
        totals["oracle"] += s.correct[oracle_arm[s.kind]]
        if i % step == 0 or i == n:
            out["x"].append(i)
            for name in policies:
                out[name].append(totals[name] / i)
                out[f"{name}_regret"].append(totals["oracle"] - totals[name])
    return out
