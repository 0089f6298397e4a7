"""The Cressie-Read empirical-likelihood interval for an off-policy value, from running sums.

Shared by the trainer's gate (banditgate.ope) and the control plane's statistics
(experiments.stats), which keeps only sums per arm: the interval needs nothing else.
No scipy at import: the trainer imports this, and scipy.stats takes seconds to load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np


@dataclass(frozen=True)
class WeightSums:
    """The running sums the Cressie-Read interval needs; they add across samples."""

    n: float
    w: float
    w2: float
    wr: float
    w2r: float
    w2r2: float

    @classmethod
    def of(cls, w: np.ndarray, r: np.ndarray) -> WeightSums:
        return cls(
            float(w.size),
            float(w.sum()),
            float((w * w).sum()),
            float((w * r).sum()),
            float((w * w * r).sum()),
            float((w * w * r * r).sum()),
        )


def cressie_read_interval(
    sums: WeightSums,
    *,
    wmin: float = 0.0,
    wmax: float = math.inf,
    rmin: float = 0.0,
    rmax: float = 1.0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Empirical-likelihood (Cressie-Read -2) interval for a policy value from weight sums.

    Profile the divergence over reweightings of the sample plus one unseen example,
    whose weight is wmin or wmax and reward rmin or rmax (the worst case), and keep
    the values whose divergence is within the F(1, n) quantile; the extremes have a
    closed form (Karampatziakis et al. 2021, section 4).
    """
    n = sums.n
    if n <= 0:
        return math.nan, math.nan
    wmin, wmax = min(wmin, 1.0 - 1e-12), max(wmax, 1.0 + 1e-12)
    unseen = wmax if sums.w < n else wmin
    if math.isinf(unseen):
        g_unconstrained = 1.0 + 1.0 / n
    else:
        a = (unseen + sums.w) / (n + 1)
        b = (unseen * unseen + sums.w2) / (n + 1)
        g_unconstrained = (n + 1) * (a - 1) ** 2 / max(b - a * a, 1e-300)
    delta = f_one_quantile(alpha, n)
    budget = (-g_unconstrained - delta) / (2 * (n + 1))
    bounds = []
    for reward, sign in ((rmin, 1.0), (rmax, -1.0)):
        candidates = []
        for extra in (wmin, wmax):
            if math.isinf(extra):
                x = sign * (reward + (sums.wr - sums.w * reward) / n)
                y = (reward * sums.w - sums.wr) ** 2 / (n * (n + 1)) - (
                    reward * reward * sums.w2 - 2 * reward * sums.w2r + sums.w2r2
                ) / (n + 1)
                z = budget + 1 / (2 * n)
            else:
                mw = (extra + sums.w) / (n + 1)
                mw2 = (extra * extra + sums.w2) / (n + 1)
                mwr = sign * (extra * reward + sums.wr) / (n + 1)
                mw2r = sign * (extra * extra * reward + sums.w2r) / (n + 1)
                mw2r2 = (extra * extra * reward * reward + sums.w2r2) / (n + 1)
                spread = mw2 - mw * mw
                if spread <= 0:
                    continue
                x = mwr + (1 - mw) * (mw2r - mw * mwr) / spread
                y = (mw2r - mw * mwr) ** 2 / spread - (mw2r2 - mwr * mwr)
                z = budget + 0.5 * (1 - mw) ** 2 / spread
            if abs(y * z) <= 1e-18:
                candidates.append(x)
            elif z <= 0 and y * z >= 0:
                candidates.append(x - math.sqrt(2 * y * z))
        best = min(candidates) if candidates else sign * (rmin if sign > 0 else rmax)
        bounds.append(min(rmax, max(rmin, sign * best)))
    return bounds[0], bounds[1]


def f_one_quantile(alpha: float, n: float) -> float:
    """The upper alpha quantile of F(1, n): the square of Student's t(n) at 1 - alpha / 2.

    Cornish-Fisher expansion of t in 1/n (Abramowitz & Stegun 26.7.5), within 2e-4
    of the exact value from n = 8; below that the exact t(2) quantile, which is
    larger (conservative) for every n >= 2. No scipy: it takes seconds to import.
    """
    if n < 2:
        return math.inf
    p = 1 - alpha / 2
    if n < 8:
        t = (2 * p - 1) / math.sqrt(2 * p * (1 - p))
        return t * t
    z = NormalDist().inv_cdf(p)
    t = (
        z
        + (z**3 + z) / (4 * n)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * n**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * n**3)
        + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * n**4)
    )
    return t * t


Z95 = 1.959963984540054


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (NaN, NaN when n is 0)."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))
