"""Off-policy estimators over logged bandit data, as plain functions of numpy arrays.

For n logged decisions with reward r_i, logging probability p_i of the logged
action and target probability q_i of that same action under the policy being
evaluated (importance weight w_i = q_i / p_i):

- IPS   mean(w r). Unbiased; high variance when w is large.
- SNIPS sum(w r) / sum(w). Slightly biased, much lower variance; interval by the
        delta method.
- DR    mean(rhat_target + w (r - rhat_logged)), where rhat_logged is a reward
        model's prediction for the logged action and rhat_target its expectation
        under the target policy. Unbiased if either the propensities or the reward
        model are right; the lowest variance of the three with a decent model.

Intervals (95% by default), by `interval=`:

- "normal": value +- 1.96 standard errors. Under-covers when importance weights
  are large (logged propensities near 0.01 give weights near 100): the sample
  rarely holds the rare large weights that carry the mean.
- "cressie_read": the empirical-likelihood interval of Karampatziakis, Mineiro and
  Ramdas ("Empirical likelihood for contextual bandits", NeurIPS 2021), as in the
  VW team's estimators library: Cressie-Read power divergence -2, which has a
  closed form in six running sums, with the weights' true range [wmin, wmax] and
  the rewards' [rmin, rmax]. It allows for the large weight not yet seen, so it
  holds at small propensities. For IPS and SNIPS values; for DR as the reward
  model's mean plus the interval of the residuals' IPS (`dr_interval`); for a
  paired difference with the mean weight of the two policies (`paired_difference`).
- "bootstrap": studentised (bootstrap-t) interval from Poisson resampling with a
  fixed seed. Measured: no better than "normal" at small propensities (it cannot
  resample the large weights the sample never drew); kept for comparison.

`GATE_INTERVAL` names, per estimator, the method the trainer's gate uses for
values (its "unpaired" rule): the one that kept 93%+ coverage in every cell of
bench/stats.py's `ope` measurement (BENCHMARKS.md, "Statistics").
`PAIRED_INTERVAL` is the one for the candidate - current difference (the
"paired" rule); see its comment. An empty sample has value nan; a
sample of one has an infinite interval.

Example, on a Parquet export::

    df = pd.read_parquet("export/reviews")
    q = my_policy_prob_of_logged_action(df)  # target policy's probability
    print(ips(df.reward, df.chosen_prob, q))
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from banditgate.intervals import WeightSums, cressie_read_interval

Z95 = 1.959963984540054
BOOTSTRAP_REPLICATES = 400
BOOTSTRAP_SEED = 17
INTERVALS = ("normal", "cressie_read", "bootstrap")
# Chosen by measured coverage (bench/stats.py ope): see the module docstring.
GATE_INTERVAL = {"ips": "cressie_read", "snips": "cressie_read", "dr": "cressie_read"}
# The paired rule (the gate's default) keeps the normal interval for now: the paired
# Cressie-Read interval covers (99.7%+ where the normal one fell to 72%), but within
# the training loop's 500 examples per challenger it stops most publishes once
# exploration is at 0.02 (contextual learning 0.7066 against 0.7198; BENCHMARKS.md,
# "Off-policy intervals"). Set "cressie_read" here once the loop gathers enough
# evidence per challenger.
PAIRED_INTERVAL = "normal"


@dataclass(frozen=True)
class Estimate:
    value: float
    lo: float
    hi: float
    n: int
    interval: str = "normal"

    def interval_pair(self) -> tuple[float, float]:
        return self.lo, self.hi

    def to_dict(self) -> dict[str, Any]:
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in asdict(self).items()
        }


def _arrays(*arrays: ArrayLike) -> list[np.ndarray]:
    out = [np.asarray(a, dtype=np.float64) for a in arrays]
    n = out[0].shape
    names = ("rewards", "logged_prob", "target_prob", "reward_hat_logged", "reward_hat_target")
    for name, array in zip(names, out, strict=False):
        if array.ndim != 1 or array.shape != n:
            raise ValueError(
                f"{name}: expected a 1-d array of length {n[0]}, got shape {array.shape}"
            )
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name}: values must be finite")
    logged = out[1]
    if np.any((logged <= 0) | (logged > 1)):
        raise ValueError("logged_prob: probabilities must lie in (0, 1]")
    target = out[2]
    if np.any((target < 0) | (target > 1 + 1e-9)):
        raise ValueError("target_prob: probabilities must lie in [0, 1]")
    return out


def _mean_interval(samples: np.ndarray, interval: str = "normal", alpha: float = 0.05) -> Estimate:
    n = int(samples.size)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, interval)
    value = float(samples.mean())
    if n == 1:
        return Estimate(value, -math.inf, math.inf, 1, interval)
    if interval == "bootstrap":
        lo, hi = bootstrap_t(samples, alpha=alpha)
        return Estimate(value, lo, hi, n, interval)
    if interval != "normal":
        raise ValueError(f"interval: {interval!r} is not available for this estimator")
    se = float(samples.std(ddof=1)) / math.sqrt(n)
    z = _z(alpha)
    return Estimate(value, value - z * se, value + z * se, n, interval)


def _z(alpha: float) -> float:
    return Z95 if alpha == 0.05 else NormalDist().inv_cdf(1 - alpha / 2)


def bootstrap_t(
    samples: np.ndarray,
    *,
    alpha: float = 0.05,
    replicates: int = BOOTSTRAP_REPLICATES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Studentised bootstrap interval for a mean, from Poisson(1) resampling weights.

    Works on leading batch axes (the benchmark evaluates thousands of samples at once).
    """
    x = np.asarray(samples, dtype=np.float64)
    n = x.shape[-1]
    rng = np.random.default_rng(seed)
    counts = rng.poisson(1.0, size=(replicates, n)).astype(np.float64)
    size = np.maximum(counts.sum(axis=-1), 2.0)  # (B,)
    mean = x.mean(axis=-1)
    sd = x.std(axis=-1, ddof=1)
    # Replicate means and variances from two matrix products: (..., B).
    first = x @ counts.T / size
    second = (x * x) @ counts.T / size
    spread = np.maximum(second - first * first, 0.0) * size / (size - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (first - mean[..., None]) / np.sqrt(spread / size)
    t = np.where(np.isfinite(t), t, 0.0)
    upper_t = np.quantile(t, 1 - alpha / 2, axis=-1)
    lower_t = np.quantile(t, alpha / 2, axis=-1)
    se = sd / math.sqrt(n)
    lo, hi = mean - upper_t * se, mean - lower_t * se
    if np.ndim(lo) == 0:
        return float(lo), float(hi)
    return lo, hi


def _bounded_interval(w: np.ndarray, r: np.ndarray, bounds: Bounds | None) -> tuple[float, float]:
    b = bounds or Bounds()
    return cressie_read_interval(
        WeightSums.of(w, r), wmin=b.wmin, wmax=b.largest(w), rmin=b.rmin, rmax=b.rmax
    )


@dataclass(frozen=True)
class Bounds:
    """What the Cressie-Read interval assumes: importance weights and rewards lie in these ranges."""

    wmin: float = 0.0
    wmax: float | None = math.inf  # None: the largest weight in the sample
    rmin: float = 0.0
    rmax: float = 1.0

    def largest(self, weights: np.ndarray) -> float:
        if self.wmax is not None:
            return self.wmax
        return max(float(weights.max()) if weights.size else 1.0, 1.0 + 1e-9)


def ips(
    rewards: ArrayLike,
    logged_prob: ArrayLike,
    target_prob: ArrayLike,
    *,
    interval: str = "normal",
    bounds: Bounds | None = None,
) -> Estimate:
    r, p, q = _arrays(rewards, logged_prob, target_prob)
    if interval != "cressie_read":
        return _mean_interval(q / p * r, interval)
    est = _mean_interval(q / p * r)
    if est.n < 2:
        return Estimate(est.value, est.lo, est.hi, est.n, interval)
    lo, hi = _bounded_interval(q / p, r, bounds)
    return Estimate(est.value, lo, hi, est.n, interval)


def snips(
    rewards: ArrayLike,
    logged_prob: ArrayLike,
    target_prob: ArrayLike,
    *,
    interval: str = "normal",
    bounds: Bounds | None = None,
) -> Estimate:
    r, p, q = _arrays(rewards, logged_prob, target_prob)
    n = int(r.size)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, interval)
    w = q / p
    total = float(w.sum())
    if total <= 0:
        return Estimate(math.nan, math.nan, math.nan, n, interval)
    value = float((w * r).sum()) / total
    if n == 1:
        return Estimate(value, -math.inf, math.inf, 1, interval)
    if interval == "cressie_read":
        lo, hi = _bounded_interval(w, r, bounds)
        return Estimate(value, min(lo, value), max(hi, value), n, interval)
    if interval == "bootstrap":
        # The ratio's linearisation: value + w (r - value) / mean(w) has mean `value`.
        lo, hi = bootstrap_t(value + w * (r - value) / (total / n))
        return Estimate(value, lo, hi, n, interval)
    # Delta method for a ratio of means: Var ~ mean((w (r - value))^2) / (n mean(w)^2).
    mean_w = total / n
    variance = float(np.mean((w * (r - value)) ** 2)) / (n * mean_w**2) * n / (n - 1)
    se = math.sqrt(variance)
    return Estimate(value, value - Z95 * se, value + Z95 * se, n, interval)


def dr(
    rewards: ArrayLike,
    logged_prob: ArrayLike,
    target_prob: ArrayLike,
    reward_hat_logged: ArrayLike,
    reward_hat_target: ArrayLike,
    *,
    interval: str = "normal",
    bounds: Bounds | None = None,
) -> Estimate:
    r, p, q, rhat_logged, rhat_target = _arrays(
        rewards, logged_prob, target_prob, reward_hat_logged, reward_hat_target
    )
    if interval != "cressie_read":
        return _mean_interval(rhat_target + q / p * (r - rhat_logged), interval)
    est = _mean_interval(rhat_target + q / p * (r - rhat_logged))
    if est.n < 2:
        return Estimate(est.value, est.lo, est.hi, est.n, interval)
    lo, hi = dr_interval(r, p, q, rhat_logged, rhat_target, bounds or Bounds())
    return Estimate(est.value, lo, hi, est.n, interval)


def dr_interval(
    r: np.ndarray,
    p: np.ndarray,
    q: np.ndarray,
    rhat_logged: np.ndarray,
    rhat_target: np.ndarray,
    bounds: Bounds,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """DR's value as the reward model's mean plus an IPS of the residuals, each at alpha / 2.

    The residual r - rhat lies in [rmin - rmax, rmax - rmin], so its importance-weighted
    mean gets the Cressie-Read interval (which allows for the large weight not yet seen);
    the model's mean over the contexts gets a normal one.
    """
    n = r.size
    model = float(rhat_target.mean())
    margin = _z(alpha / 2) * float(rhat_target.std(ddof=1)) / math.sqrt(n)
    span = bounds.rmax - bounds.rmin
    lo, hi = cressie_read_interval(
        WeightSums.of(q / p, r - rhat_logged),
        wmin=bounds.wmin,
        wmax=bounds.largest(q / p),
        rmin=-span,
        rmax=span,
        alpha=alpha / 2,
    )
    return model - margin + lo, model + margin + hi


def paired_difference(
    rewards: ArrayLike,
    logged_prob: ArrayLike,
    target_a: ArrayLike,
    target_b: ArrayLike,
    reward_hat_logged: ArrayLike | None = None,
    reward_hat_a: ArrayLike | None = None,
    reward_hat_b: ArrayLike | None = None,
    *,
    interval: str = "normal",
    bounds: Bounds | None = None,
) -> Estimate:
    """Value of policy a minus policy b on the same logged examples (IPS, or DR with a reward model).

    "normal" and "bootstrap" work on the paired terms. "cressie_read" keeps the pairing
    too: with the mean weight w = (w_a + w_b) / 2 (non-negative, mean 1) and
    g = 2 (w_a - w_b) / (w_a + w_b) e, where e is the reward (IPS) or the residual
    r - rhat (DR), w g = (w_a - w_b) e, so the difference is the Cressie-Read value of
    g under w (g is bounded: |g| <= 2 |e|), plus for DR the paired normal interval of
    the reward model's mean difference, each at alpha / 2. Identical policies give
    g = 0 and a zero-width residual part.
    """
    b = bounds or Bounds()
    if reward_hat_logged is None or reward_hat_a is None or reward_hat_b is None:
        r, p, qa, qb = _arrays(rewards, logged_prob, target_a, target_b)
        residual, model = r, np.zeros_like(r)
        reach = 2 * max(abs(b.rmin), abs(b.rmax))
    else:
        r, p, qa, qb, rhat, rhat_a, rhat_b = _arrays(
            rewards, logged_prob, target_a, target_b, reward_hat_logged, reward_hat_a, reward_hat_b
        )
        residual, model = r - rhat, rhat_a - rhat_b
        reach = 2 * (b.rmax - b.rmin)
    terms = model + (qa - qb) / p * residual
    if interval != "cressie_read":
        return _mean_interval(terms, interval)
    est = _mean_interval(terms)
    if est.n < 2:
        return Estimate(est.value, est.lo, est.hi, est.n, interval)
    both = qa + qb
    weight = both / (2 * p)
    g = np.divide(2 * (qa - qb) * residual, both, out=np.zeros_like(both), where=both > 0)
    paired_model = reward_hat_logged is not None
    alpha = 0.025 if paired_model else 0.05
    lo, hi = cressie_read_interval(
        WeightSums.of(weight, g),
        wmin=b.wmin,
        wmax=b.largest(weight),
        rmin=-reach,
        rmax=reach,
        alpha=alpha,
    )
    if paired_model:
        centre = float(model.mean())
        margin = _z(alpha) * float(model.std(ddof=1)) / math.sqrt(est.n)
        lo, hi = centre - margin + lo, centre + margin + hi
    return Estimate(est.value, lo, hi, est.n, interval)


def all_estimates(
    rewards: ArrayLike,
    logged_prob: ArrayLike,
    target_prob: ArrayLike,
    reward_hat_logged: ArrayLike,
    reward_hat_target: ArrayLike,
    *,
    intervals: dict[str, str] | None = None,
    bounds: Bounds | None = None,
) -> dict[str, dict[str, Any]]:
    """IPS, SNIPS and DR, each with the interval `intervals` names (default: all normal)."""
    chosen = intervals or {}
    return {
        "ips": ips(
            rewards, logged_prob, target_prob, interval=chosen.get("ips", "normal"), bounds=bounds
        ).to_dict(),
        "snips": snips(
            rewards, logged_prob, target_prob, interval=chosen.get("snips", "normal"), bounds=bounds
        ).to_dict(),
        "dr": dr(
            rewards,
            logged_prob,
            target_prob,
            reward_hat_logged,
            reward_hat_target,
            interval=chosen.get("dr", "normal"),
            bounds=bounds,
        ).to_dict(),
    }
