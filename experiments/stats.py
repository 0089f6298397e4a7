"""Experiment statistics: per arm, per experiment, and over time.

The tallies come from experiments.ledger; every number the API reports is
computed from them:

- mean reward, 95% CI: Wilson score interval for 0/1 rewards, Student t otherwise;
- value (what the arm would earn on all traffic): self-normalised IPS,
  V = sum(w r) / sum(w), w = 1/p, with the Cressie-Read empirical-likelihood 95%
  interval from the same weight sums (trainer.ope's method, which keeps its
  coverage at small propensities where V ± 1.96 se does not; BENCHMARKS.md);
- probability of being best: Monte Carlo over Beta(1 + s, 1 + f) posteriors for 0/1
  rewards, Normal(mean, s²/n) otherwise (Normal(V, se²) of the IPS value for bandits);
- regret against the best arm: n (V_best - mean reward obtained);
- sample-ratio mismatch: Pearson chi-square of chosen counts against the configured
  weights (static allocations) or a generalised chi-square against the logged
  propensities (bandits): z = O - E with E = sum_d p_d, covariance
  S = diag(E) - sum_d p_d p_dᵀ, X² = zᵀ S⁺ z on rank(S) degrees of freedom;
- the sequential A/B test lives in experiments.sequential; for each comparison,
  the units the test needs at the observed effect and the current traffic come
  from experiments.planning.

Randomised traffic only (not `forced`, i.e. client-pinned) feeds the inference;
forced decisions are counted separately.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

from banditgate.contracts import JoinCounter
from banditgate.intervals import WeightSums, cressie_read_interval, wilson_interval
from banditgate.policy import default_weights, normalise
from banditgate.spec import ExperimentSpec
from experiments import shadow_results
from experiments.ledger import (
    BUCKET_MS,
    LATENCY_BUCKETS_S,
    ArmTally,
    Bucket,
    Ledger,
    control_arm,
    wall_ms,
)
from experiments.planning import PlanError, plan
from experiments.sequential import SequentialComparison

VALUE_INTERVAL = "cressie_read"
TRAFFIC_WINDOW_S = 3600.0
SRM_ALPHA = 0.001
SRM_MIN_EXPECTED = 5.0
PROB_BEST_DRAWS = 20_000
Z95 = 1.959963984540054


def mean_ci(tally: ArmTally, binary: bool) -> tuple[float | None, list[float] | None]:
    n = tally.r_n
    if n == 0:
        return None, None
    mean = tally.r_sum / n
    if binary:
        return mean, list(wilson_interval(tally.r_sum, n))
    if n < 2:
        return mean, None
    var = max(tally.r_sum2 - n * mean * mean, 0.0) / (n - 1)
    half = float(sps.t.ppf(0.975, n - 1)) * math.sqrt(var / n)
    return mean, [mean - half, mean + half]


def snips_value(tally: ArmTally) -> tuple[float | None, float | None]:
    """Self-normalised IPS value and its delta-method standard error."""
    if tally.w <= 0:
        return None, None
    value = tally.wr / tally.w
    spread = tally.w2r2 - 2 * value * tally.w2r + value * value * tally.w2
    return value, math.sqrt(max(spread, 0.0)) / tally.w


def value_interval(
    tally: ArmTally, n_total: int, reward: tuple[float, float], alpha: float = 0.05
) -> list[float] | None:
    """Cressie-Read interval of the arm's value: its weight sums over all randomised examples."""
    if tally.w <= 0 or n_total < 2:
        return None
    sums = WeightSums(float(n_total), tally.w, tally.w2, tally.wr, tally.w2r, tally.w2r2)
    lo, hi = cressie_read_interval(sums, rmin=reward[0], rmax=reward[1], alpha=alpha)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    return [lo, hi]


def sample_variance(tally: ArmTally) -> float | None:
    n = tally.r_n
    if n < 2:
        return None
    mean = tally.r_sum / n
    return max(tally.r_sum2 - n * mean * mean, 0.0) / (n - 1)


def prob_best(
    arms: Sequence[str],
    tallies: dict[str, ArmTally],
    *,
    method: str,
    seed: int = 0,
    draws: int = PROB_BEST_DRAWS,
) -> dict[str, float | None]:
    """P(arm has the highest mean) by Monte Carlo over independent posteriors."""
    rng = np.random.default_rng(seed)
    columns: list[np.ndarray] = []
    names: list[str] = []
    for arm in arms:
        tally = tallies.get(arm, ArmTally())
        if method == "beta":
            successes = tally.r_sum
            columns.append(rng.beta(1.0 + successes, 1.0 + tally.r_n - successes, size=draws))
        elif method == "normal":
            var = sample_variance(tally)
            if var is None:
                continue
            columns.append(
                rng.normal(tally.r_sum / tally.r_n, math.sqrt(var / tally.r_n), size=draws)
            )
        else:
            value, se = snips_value(tally)
            if value is None or se is None or tally.r_n < 2:
                continue
            columns.append(rng.normal(value, se, size=draws))
        names.append(arm)
    result: dict[str, float | None] = {arm: None for arm in arms}
    if not any(tallies.get(arm, ArmTally()).r_n for arm in names):
        return result  # only the prior speaks: no probability worth showing
    if len(names) < 2:
        if len(names) == 1:
            result[names[0]] = 1.0
        return result
    winners = np.argmax(np.column_stack(columns), axis=1)
    counts = np.bincount(winners, minlength=len(names))
    for name, count in zip(names, counts, strict=True):
        result[name] = float(count) / draws
    return result


def configured_weights(
    spec: ExperimentSpec, override: dict[str, Any] | None
) -> dict[str, float] | None:
    """The static split the router applies, normalised over the arms; None for a learning bandit."""
    names = spec.arm_names
    if override is not None:
        raw = override.get("weights") or {}
        weights = [max(float(raw.get(n, 0.0)), 0.0) for n in names]
    elif spec.mode == "ab" or (spec.mode == "bandit" and spec.policy.learner == "static"):
        table = default_weights(spec)
        weights = [max(float(table.get(n, 0.0)), 0.0) for n in names]
    elif spec.mode == "canary" and spec.canary is not None:
        weights = [1.0 if n == spec.canary.baseline else 0.0 for n in names]
    elif spec.mode == "bluegreen" and spec.bluegreen is not None:
        weights = [1.0 if n == spec.bluegreen.active else 0.0 for n in names]
    elif spec.mode == "shadow" and spec.shadow is not None:
        weights = [1.0 if n == spec.shadow.primary else 0.0 for n in names]
    else:
        return None
    return dict(zip(names, normalise(weights), strict=True))


def srm_configured(
    merged: Bucket, arms: Sequence[str], weights: dict[str, float]
) -> dict[str, Any]:
    """Pearson chi-square of decisions logged under exactly the configured split."""
    target = tuple(round(weights[a], 9) for a in arms)
    observed = np.zeros(len(arms))
    other = 0
    for (signature_arms, pmf), counts in merged.signatures.items():
        if signature_arms == tuple(arms) and all(
            abs(p - q) < 1e-6 for p, q in zip(pmf, target, strict=True)
        ):
            observed += counts
        else:
            other += sum(counts)
    expected = observed.sum() * np.asarray([weights[a] for a in arms])
    out: dict[str, Any] = {
        "method": "configured_weights",
        "n": int(observed.sum()),
        "observed": {a: int(o) for a, o in zip(arms, observed, strict=True)},
        "expected": {a: float(e) for a, e in zip(arms, expected, strict=True)},
        "n_other_pmf": other,
    }
    return _chi_square(
        out,
        observed,
        expected,
        np.diag(expected) - np.outer(expected, expected) / max(observed.sum(), 1),
    )


def srm_propensities(merged: Bucket) -> dict[str, Any]:
    """Generalised chi-square of chosen counts against the logged propensities."""
    names: list[str] = []
    for arms in merged.propensity:
        for a in arms:
            if a not in names:
                names.append(a)
    k = len(names)
    observed = np.zeros(k)
    expected = np.zeros(k)
    pp = np.zeros((k, k))
    for arms, tally in merged.propensity.items():
        index = [names.index(a) for a in arms]
        observed[index] += tally.chosen
        expected[index] += tally.sum_p
        pp[np.ix_(index, index)] += tally.sum_pp
    out: dict[str, Any] = {
        "method": "logged_propensities",
        "n": int(observed.sum()),
        "observed": {a: int(o) for a, o in zip(names, observed, strict=True)},
        "expected": {a: float(e) for a, e in zip(names, expected, strict=True)},
        "n_other_pmf": 0,
    }
    return _chi_square(out, observed, expected, np.diag(expected) - pp)


def _chi_square(
    out: dict[str, Any], observed: np.ndarray, expected: np.ndarray, cov: np.ndarray
) -> dict[str, Any]:
    out.update(chi2=None, df=0, p_value=None, flagged=False, threshold=SRM_ALPHA, reason=None)
    impossible = [i for i in range(len(observed)) if observed[i] > 0 and expected[i] <= 1e-12]
    if impossible:
        names = list(out["observed"])
        out.update(
            flagged=True,
            p_value=0.0,
            reason="traffic reached arms configured or logged at probability 0: "
            f"{[names[i] for i in impossible]}",
        )
        return out
    if observed.sum() == 0:
        out["reason"] = "no randomised traffic yet"
        return out
    live = expected > 1e-12
    if live.sum() < 2:
        out["reason"] = "fewer than two arms can receive traffic"
        return out
    z = (observed - expected)[live]
    sub = cov[np.ix_(live, live)]
    df = int(np.linalg.matrix_rank(sub, tol=1e-9 * max(float(expected.sum()), 1.0)))
    if df == 0:
        out["reason"] = "no randomised traffic"
        return out
    statistic = float(z @ np.linalg.pinv(sub, rcond=1e-10, hermitian=True) @ z)
    p_value = float(sps.chi2.sf(statistic, df))
    out.update(chi2=statistic, df=df, p_value=p_value)
    if float(expected[live].min()) < SRM_MIN_EXPECTED:
        out["reason"] = f"too little traffic (an expected count is below {SRM_MIN_EXPECTED:g})"
        return out
    if p_value < SRM_ALPHA:
        out.update(
            flagged=True,
            reason=f"chosen counts deviate from expected (p = {p_value:.2e} < {SRM_ALPHA})",
        )
    return out


def srm(spec: ExperimentSpec, override: dict[str, Any] | None, merged: Bucket) -> dict[str, Any]:
    if (
        spec.mode == "ab"
        and override is None
        and spec.ab is not None
        and spec.ab.sticky is not None
    ):
        return {
            "method": "not_applicable",
            "flagged": False,
            "reason": "sticky assignment: requests of one key are not independent draws",
        }
    weights = configured_weights(spec, override)
    if weights is not None and not merged.signatures_overflow:
        return srm_configured(merged, spec.arm_names, weights)
    return srm_propensities(merged)


def summarize(
    spec: ExperimentSpec,
    ledger: Ledger,
    *,
    override: dict[str, Any] | None,
    counters: dict[str, int],
    window_s: float | None = None,
    rolling_s: float = 300.0,
    alpha: float = 0.05,
    now_ms: int | None = None,
) -> dict[str, Any]:
    """The numbers behind GET /v1/experiments/{name}/stats."""
    now_ms = now_ms if now_ms is not None else wall_ms()
    start_ms = int(now_ms - window_s * 1000) if window_s is not None else None
    merged = ledger.merged(start_ms)
    rolling = ledger.merged(int(now_ms - rolling_s * 1000))
    names = list(spec.arm_names) + sorted(set(merged.arms) - set(spec.arm_names))
    reward = spec.reward
    binary = (
        reward.min == 0.0
        and reward.max == 1.0
        and all(t.nonbinary == 0 for t in merged.arms.values())
    )
    bandit_like = spec.mode == "bandit" and override is None and spec.policy.learner != "static"
    method = "normal_ips" if bandit_like else ("beta" if binary else "normal")
    best = prob_best(spec.arm_names, merged.arms, method=method)
    weights = configured_weights(spec, override)
    total_decisions = merged.decisions
    n_total = sum(t.r_n for t in merged.arms.values())
    bounds = (reward.min, reward.max)
    arms_out: list[dict[str, Any]] = []
    values: dict[str, float] = {}
    for arm in names:
        tally = merged.arms.get(arm, ArmTally())
        mean, ci = mean_ci(tally, binary)
        value, _ = snips_value(tally)
        if value is not None and arm in spec.arm_names:
            values[arm] = value if bandit_like else (mean if mean is not None else value)
        roll = rolling.arms.get(arm, ArmTally())
        arms_out.append(
            {
                "arm": arm,
                "in_spec": arm in spec.arm_names,
                "decisions": tally.decisions,
                "randomized": tally.randomized,
                "forced": tally.forced,
                "errors": tally.errors,
                "error_rate": tally.errors / tally.decisions if tally.decisions else None,
                "mean_latency_ms": tally.latency_ms / tally.decisions if tally.decisions else None,
                "traffic_share": tally.decisions / total_decisions if total_decisions else None,
                "configured_weight": weights.get(arm) if weights is not None else None,
                "mean_action_probability": tally.action_p / merged.randomized
                if merged.randomized
                else None,
                "mean_sampled_probability": tally.sampled_p / tally.randomized
                if tally.randomized
                else None,
                "joined": tally.joined,
                "rewarded": tally.rewarded,
                "reward_n": tally.r_n,
                "mean_reward": mean,
                "mean_reward_ci": ci,
                "value": value,
                "value_ci": value_interval(tally, n_total, bounds),
                "value_interval": VALUE_INTERVAL,
                "rolling_mean_reward": roll.r_sum / roll.r_n if roll.r_n else None,
                "rolling_n": roll.r_n,
                "prob_best": best.get(arm),
            }
        )
    r_n = sum(t.r_n for t in merged.arms.values())
    r_sum = sum(t.r_sum for t in merged.arms.values())
    obtained = r_sum / r_n if r_n else None
    regret: dict[str, Any] = {"best_arm": None, "per_decision": None, "total": None}
    if values and obtained is not None:
        best_arm = max(values, key=lambda a: values[a])
        per = values[best_arm] - obtained
        regret = {"best_arm": best_arm, "per_decision": per, "total": per * r_n}
    regret["method"] = (
        "IPS value of the best arm minus the mean reward obtained"
        if bandit_like
        else "best arm mean minus mean obtained"
    )
    return {
        "experiment": spec.name,
        "mode": spec.mode,
        "generated_ms": now_ms,
        "window": {"start_ms": start_ms, "end_ms": now_ms, "seconds": window_s},
        "rolling_s": rolling_s,
        "reward": {
            "binary": binary,
            "min": reward.min,
            "max": reward.max,
            "default": reward.default,
        },
        "prob_best_method": method,
        "totals": {
            "decisions": total_decisions,
            "randomized": merged.randomized,
            "forced": sum(t.forced for t in merged.arms.values()),
            "errors": sum(t.errors for t in merged.arms.values()),
            "joined": merged.joined,
            "rewarded": sum(t.rewarded for t in merged.arms.values()),
            "mean_reward": obtained,
            "last_decision_ms": ledger.last_decision_ms or None,
            "last_joined_ms": ledger.last_joined_ms or None,
        },
        "arms": arms_out,
        "rewards": {
            "received": counters.get(JoinCounter.REWARDS_RECEIVED, 0),
            "late": counters.get(JoinCounter.REWARDS_LATE, 0),
            "orphaned": counters.get(JoinCounter.REWARDS_ORPHANED, 0),
            "duplicate": counters.get(JoinCounter.REWARDS_DUPLICATE, 0),
            "counters": counters,
        },
        "regret": regret,
        "srm": srm(spec, override, merged),
        "shadow": shadow_results.summary(
            spec.shadow.primary if spec.shadow is not None else None, merged.shadow
        )
        if spec.mode == "shadow" or merged.shadow
        else None,
        "sequential": sequential_summary(
            spec,
            ledger,
            alpha,
            traffic(
                spec,
                ledger,
                override,
                now_ms=now_ms,
                merged=merged,
                recent=rolling,
                recent_s=rolling_s,
            ),
        ),
    }


def traffic(
    spec: ExperimentSpec,
    ledger: Ledger,
    override: dict[str, Any] | None = None,
    *,
    now_ms: int | None = None,
    merged: Bucket | None = None,
    recent: Bucket | None = None,
    recent_s: float = TRAFFIC_WINDOW_S,
) -> dict[str, Any]:
    """What planning needs from the running experiment: split, control rate, units per hour.

    `merged` (the data to read the control's rate from) and `recent` (the last
    `recent_s` seconds) are merged here unless the caller has them already.
    """
    now_ms = now_ms if now_ms is not None else wall_ms()
    control = control_arm(spec)
    treatment = next((a for a in spec.arm_names if a != control), None)
    weights = configured_weights(spec, override)
    share = None
    if weights is not None and control is not None and treatment is not None:
        pair = weights.get(control, 0.0) + weights.get(treatment, 0.0)
        share = weights.get(treatment, 0.0) / pair if pair > 0 else None
    merged = merged if merged is not None else ledger.merged()
    tally = merged.arms.get(control or "", ArmTally())
    recent = recent if recent is not None else ledger.merged(int(now_ms - recent_s * 1000))
    first = min([*ledger.fine, *ledger.coarse], default=now_ms)
    span_s = min(recent_s, max((now_ms - first) / 1000, 1.0))
    return {
        "control": control,
        "treatment": treatment,
        "share": share,
        "control_rate": tally.r_sum / tally.r_n if tally.r_n else None,
        "units_per_hour": recent.joined * 3600.0 / span_s if recent.joined else None,
    }


def _to_significance(
    comparison: dict[str, Any], now: dict[str, Any], alpha: float
) -> dict[str, Any] | None:
    """Units (and hours at the current traffic) the tests need to detect the observed effect."""
    effect, rate = comparison.get("effect"), comparison.get("mean_control")
    units = comparison.get("units") or 0
    n_t, n_c = comparison.get("n_treatment") or 0, comparison.get("n_control") or 0
    if effect is None or rate is None or not n_t or not n_c:
        return None
    try:
        out = plan(
            rate=rate,
            effect=effect,
            share=n_t / (n_t + n_c),
            alpha=alpha,
            units_per_hour=now.get("units_per_hour"),
        )
    except PlanError:
        return None
    needed = out["sequential"]["units"]
    remaining = max(needed - units, 0)
    per_hour = now.get("units_per_hour")
    return {
        "effect": effect,
        "fixed_horizon_units": out["fixed_horizon"]["units"],
        "sequential_units": needed,
        "remaining_units": remaining,
        "remaining_hours": remaining / per_hour if per_hour else None,
    }


def sequential_summary(
    spec: ExperimentSpec, ledger: Ledger, alpha: float, now: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """Each arm against the control; Bonferroni across the comparisons."""
    control = control_arm(spec)
    if control is None:
        return None
    if spec.mode == "ab" and spec.ab is not None and spec.ab.sticky is not None:
        return {
            "method": "not_applicable",
            "reason": "sticky assignment: units are not independent",
        }
    treatments = [a for a in spec.arm_names if a != control]
    level = alpha / max(len(treatments), 1)
    comparisons = []
    for arm in treatments:
        comparison = ledger.sequential.get((control, arm))
        if comparison is None:
            comparison = SequentialComparison(control, arm, spec.reward.min, spec.reward.max)
        result = comparison.result(level)
        result["to_significance"] = _to_significance(result, now or {}, level)
        comparisons.append(result)
    return {
        "method": "mixture of betting e-processes on AIPW terms",
        "control": control,
        "alpha": alpha,
        "alpha_per_comparison": level,
        "comparisons": comparisons,
    }


def latency_quantile(histogram: np.ndarray | None, q: float) -> float | None:
    """The q-quantile in ms of a LATENCY_BUCKETS_S histogram, interpolated in its bucket."""
    if histogram is None:
        return None
    total = int(histogram.sum())
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(histogram.tolist()):
        if count and seen + count >= rank:
            if i >= len(LATENCY_BUCKETS_S):
                return LATENCY_BUCKETS_S[-1] * 1000.0
            low = LATENCY_BUCKETS_S[i - 1] if i > 0 else 0.0
            high = LATENCY_BUCKETS_S[i]
            return (low + (high - low) * max(0.0, rank - seen) / count) * 1000.0
        seen += count
    return LATENCY_BUCKETS_S[-1] * 1000.0


def arm_value(tally: ArmTally) -> float | None:
    """An arm's reward per decision: its self-normalised IPS value, else its mean."""
    if tally.w > 0:
        return tally.wr / tally.w
    return tally.r_sum / tally.r_n if tally.r_n else None


def cumulative(shown: list[Bucket], arms: list[str]) -> dict[str, Any]:
    """Cumulative mean reward and regret over the steps shown, against the best arm and
    against a uniform split, both valued on the window's data (IPS where randomised)."""
    window = Bucket(0)
    for step in shown:
        window.add(step)
    values = {a: v for a in arms if (v := arm_value(window.arms.get(a, ArmTally()))) is not None}
    best_arm = max(values, key=lambda a: values[a]) if values else None
    best = values[best_arm] if best_arm is not None else None
    uniform = sum(values.values()) / len(values) if values else None
    n = 0
    total = 0.0
    out: dict[str, list[float | int | None]] = {
        "n": [],
        "mean_reward": [],
        "regret": [],
        "uniform_regret": [],
    }
    for step in shown:
        n += sum(t.r_n for t in step.arms.values())
        total += sum(t.r_sum for t in step.arms.values())
        out["n"].append(n)
        out["mean_reward"].append(total / n if n else None)
        out["regret"].append(n * best - total if best is not None and n else None)
        out["uniform_regret"].append(
            n * (best - uniform) if best is not None and uniform is not None and n else None
        )
    return {"best_arm": best_arm, "best_value": best, "uniform_value": uniform, **out}


def timeseries(
    spec: ExperimentSpec,
    ledger: Ledger,
    *,
    window_s: float = 3600.0,
    step_s: float | None = None,
    rolling_s: float | None = None,
    now_ms: int | None = None,
) -> dict[str, Any]:
    """Per step and arm: traffic, probabilities, rewards (rolling over `rolling_s`), errors
    and latency percentiles; cumulative reward and regret. The steps start at the
    experiment's first decision when that is inside the window."""
    now_ms = now_ms if now_ms is not None else wall_ms()
    if step_s is None:
        step_s = max(BUCKET_MS / 1000, math.ceil(window_s / 120 / 10) * 10)
    step_ms = max(int(step_s * 1000), BUCKET_MS)
    step_ms -= step_ms % BUCKET_MS
    rolling_steps = max(
        1, round((rolling_s if rolling_s is not None else 5 * step_ms / 1000) * 1000 / step_ms)
    )
    end = now_ms - now_ms % step_ms + step_ms
    start = end - math.ceil(window_s * 1000 / step_ms) * step_ms
    first = start - (rolling_steps - 1) * step_ms
    n_steps = (end - first) // step_ms
    steps = [Bucket(first + i * step_ms) for i in range(n_steps)]
    for bucket in ledger.buckets(first, end):
        steps[(bucket.start_ms - first) // step_ms].add(bucket)
    names = list(spec.arm_names) + sorted({a for s in steps for a in s.arms} - set(spec.arm_names))
    shown = steps[rolling_steps - 1 :]
    skip = 0
    if ledger.first_decision_ms is not None and ledger.first_decision_ms > start:
        first_step = ledger.first_decision_ms - ledger.first_decision_ms % step_ms
        skip = max(0, min(len(shown) - 1, (first_step - start) // step_ms))
    arms_out: dict[str, dict[str, list[float | int | None]]] = {}
    for arm in names:
        series: dict[str, list[float | int | None]] = {
            k: []
            for k in (
                "decisions",
                "share",
                "action_p",
                "sampled_p",
                "mean_reward",
                "rolling_reward",
                "errors",
                "error_rate",
                "latency_ms",
                "latency_p50_ms",
                "latency_p99_ms",
            )
        }
        for i, step in enumerate(shown):
            if i < skip:
                continue
            tally = step.arms.get(arm, ArmTally())
            series["decisions"].append(tally.decisions)
            series["share"].append(tally.decisions / step.decisions if step.decisions else None)
            series["action_p"].append(tally.action_p / step.randomized if step.randomized else None)
            series["sampled_p"].append(
                tally.sampled_p / tally.randomized if tally.randomized else None
            )
            series["mean_reward"].append(tally.r_sum / tally.r_n if tally.r_n else None)
            window = steps[i : i + rolling_steps]
            r_n = sum(s.arms[arm].r_n for s in window if arm in s.arms)
            r_sum = sum(s.arms[arm].r_sum for s in window if arm in s.arms)
            series["rolling_reward"].append(r_sum / r_n if r_n else None)
            series["errors"].append(tally.errors)
            series["error_rate"].append(tally.errors / tally.decisions if tally.decisions else None)
            series["latency_ms"].append(
                tally.latency_ms / tally.decisions if tally.decisions else None
            )
            histogram = step.latency.get(arm)
            series["latency_p50_ms"].append(latency_quantile(histogram, 0.5))
            series["latency_p99_ms"].append(latency_quantile(histogram, 0.99))
        arms_out[arm] = series
    shown = shown[skip:]
    return {
        "experiment": spec.name,
        "start_ms": shown[0].start_ms if shown else start,
        "window_start_ms": start,
        "first_decision_ms": ledger.first_decision_ms,
        "end_ms": end,
        "step_s": step_ms / 1000,
        "rolling_s": rolling_steps * step_ms / 1000,
        "t": [s.start_ms for s in shown],
        "decisions": [s.decisions for s in shown],
        "joined": [s.joined for s in shown],
        "arms": arms_out,
        "cumulative": cumulative(shown, names),
    }
