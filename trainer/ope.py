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

Intervals are 95% normal approximations (value +- 1.96 standard errors), honest
for the sample sizes a gate works with (hundreds and up). An empty sample has
value nan; a sample of one has an infinite interval.

Example, on a Parquet export::

    df = pd.read_parquet("export/reviews")
    q = my_policy_prob_of_logged_action(df)  # target policy's probability
    print(ips(df.reward, df.chosen_prob, q))
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Estimate:
    value: float
    lo: float
    hi: float
    n: int

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


def _mean_interval(samples: np.ndarray) -> Estimate:
    n = int(samples.size)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    value = float(samples.mean())
    if n == 1:
        return Estimate(value, -math.inf, math.inf, 1)
    se = float(samples.std(ddof=1)) / math.sqrt(n)
    return Estimate(value, value - Z95 * se, value + Z95 * se, n)


def ips(rewards: ArrayLike, logged_prob: ArrayLike, target_prob: ArrayLike) -> Estimate:
    r, p, q = _arrays(rewards, logged_prob, target_prob)
    return _mean_interval(q / p * r)


def snips(rewards: ArrayLike, logged_prob: ArrayLike, target_prob: ArrayLike) -> Estimate:
    r, p, q = _arrays(rewards, logged_prob, target_prob)
    n = int(r.size)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    w = q / p
    total = float(w.sum())
    if total <= 0:
        return Estimate(math.nan, math.nan, math.nan, n)
    value = float((w * r).sum()) / total
    if n == 1:
        return Estimate(value, -math.inf, math.inf, 1)
    # Delta method for a ratio of means: Var ~ mean((w (r - value))^2) / (n mean(w)^2).
    mean_w = total / n
    variance = float(np.mean((w * (r - value)) ** 2)) / (n * mean_w**2) * n / (n - 1)
    se = math.sqrt(variance)
    return Estimate(value, value - Z95 * se, value + Z95 * se, n)


def dr(
    rewards: ArrayLike,
    logged_prob: ArrayLike,
    target_prob: ArrayLike,
    reward_hat_logged: ArrayLike,
    reward_hat_target: ArrayLike,
) -> Estimate:
    r, p, q, rhat_logged, rhat_target = _arrays(
        rewards, logged_prob, target_prob, reward_hat_logged, reward_hat_target
    )
    return _mean_interval(rhat_target + q / p * (r - rhat_logged))


def paired_difference(
    rewards: ArrayLike,
    logged_prob: ArrayLike,
    target_a: ArrayLike,
    target_b: ArrayLike,
    reward_hat_logged: ArrayLike | None = None,
    reward_hat_a: ArrayLike | None = None,
    reward_hat_b: ArrayLike | None = None,
) -> Estimate:
    """Value of policy a minus policy b on the same logged examples (IPS, or DR with a reward model)."""
    if reward_hat_logged is None or reward_hat_a is None or reward_hat_b is None:
        r, p, qa, qb = _arrays(rewards, logged_prob, target_a, target_b)
        return _mean_interval((qa - qb) / p * r)
    r, p, qa, qb, rhat, rhat_a, rhat_b = _arrays(
        rewards, logged_prob, target_a, target_b, reward_hat_logged, reward_hat_a, reward_hat_b
    )
    return _mean_interval(rhat_a - rhat_b + (qa - qb) / p * (r - rhat))


def all_estimates(
    rewards: ArrayLike,
    logged_prob: ArrayLike,
    target_prob: ArrayLike,
    reward_hat_logged: ArrayLike,
    reward_hat_target: ArrayLike,
) -> dict[str, dict[str, Any]]:
    return {
        "ips": ips(rewards, logged_prob, target_prob).to_dict(),
        "snips": snips(rewards, logged_prob, target_prob).to_dict(),
        "dr": dr(rewards, logged_prob, target_prob, reward_hat_logged, reward_hat_target).to_dict(),
    }
