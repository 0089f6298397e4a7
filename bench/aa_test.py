"""A/A simulation: how often does a sequential A/B test, stopped at its first significant
look, declare a difference that is not there?

Both arms share one reward distribution. Each simulated experiment looks after
*every* unit (once both arms have the burn-in count), which is the most a user
can peek; the anytime-valid test should be wrong in at most alpha of them. For
contrast, the same data is analysed with a classic two-sample z-test repeated
every `naive_every` units, which is what "peeking" at a fixed-horizon test does.

    .venv/bin/python bench/aa_test.py                # the numbers in BENCHMARKS.md
    .venv/bin/python bench/aa_test.py --sims 500 --units 2000
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import numpy as np
from scipy import stats

from experiments.sequential import Units, Wealth, advance


@dataclass
class Scenario:
    name: str
    weight_a: float  # share of traffic to arm a; the rest goes to b
    mean_a: float
    mean_b: float
    reward: str = "bernoulli"  # bernoulli | continuous (Beta in [0, 1] with the given mean)


@dataclass
class Outcome:
    scenario: str
    sims: int
    units: int
    sequential_rejections: int
    mixture_rejections: int
    naive_rejections: int
    median_stop: float | None

    @property
    def sequential_rate(self) -> float:
        return self.sequential_rejections / self.sims

    @property
    def mixture_rate(self) -> float:
        return self.mixture_rejections / self.sims

    @property
    def naive_rate(self) -> float:
        return self.naive_rejections / self.sims


def _rewards(rng: np.random.Generator, means: np.ndarray, kind: str) -> np.ndarray:
    if kind == "bernoulli":
        return (rng.random(means.shape) < means).astype(np.float64)
    # Beta(2m, 2(1-m)) has mean m and lives in [0, 1]: a bounded continuous reward.
    return rng.beta(2 * means, 2 * (1 - means))


def _mixture_log_p(
    state: dict[str, np.ndarray], units: Units, alpha: float, t_opt: int
) -> np.ndarray:
    """The Gaussian-mixture asymptotic confidence sequence (the method this project first tried).

    Same AIPW terms; boundary mean ± sd sqrt(2(t rho² + 1)/(t² rho²) log(sqrt(t rho² + 1)/alpha)).
    Returns pointwise log p-values, 0 until both arms have `min_per_arm` units.
    """
    log_term = -2.0 * math.log(alpha)
    rho2 = (log_term + math.log(log_term + 1.0)) / t_opt
    in_a, in_b, r = units.in_a, units.in_b, units.reward
    n_a = state["n_a"][:, None] + np.cumsum(in_a, axis=1)
    n_b = state["n_b"][:, None] + np.cumsum(in_b, axis=1)
    s_a = state["s_a"][:, None] + np.cumsum(in_a * r, axis=1)
    s_b = state["s_b"][:, None] + np.cumsum(in_b * r, axis=1)
    prev = lambda x, x_now: x - x_now  # noqa: E731
    na0, nb0 = prev(n_a, in_a), prev(n_b, in_b)
    sa0, sb0 = prev(s_a, in_a * r), prev(s_b, in_b * r)
    pooled = np.divide(sa0 + sb0, na0 + nb0, out=np.zeros_like(r), where=(na0 + nb0) > 0)
    m_a = np.divide(sa0, na0, out=pooled.copy(), where=na0 > 0)
    m_b = np.divide(sb0, nb0, out=pooled.copy(), where=nb0 > 0)
    phi = (m_a - m_b) + in_a * (r - m_a) / units.p_a - in_b * (r - m_b) / units.p_b
    t = state["t"][:, None] + np.arange(1, r.shape[1] + 1)
    sum_phi = state["phi"][:, None] + np.cumsum(phi, axis=1)
    sum_phi2 = state["phi2"][:, None] + np.cumsum(phi * phi, axis=1)
    mean = sum_phi / t
    var = np.maximum(sum_phi2 / t - mean**2, 1e-12)
    scale = t * rho2 + 1.0
    log_p = 0.5 * np.log(scale) - t**2 * rho2 * mean**2 / (2.0 * var * scale)
    state.update(n_a=n_a[:, -1], n_b=n_b[:, -1], s_a=s_a[:, -1], s_b=s_b[:, -1], t=t[:, -1])
    state.update(phi=sum_phi[:, -1], phi2=sum_phi2[:, -1])
    return np.where((n_a >= MIN_PER_ARM) & (n_b >= MIN_PER_ARM), log_p, 0.0)


MIN_PER_ARM = 100


def simulate(
    scenario: Scenario,
    *,
    sims: int,
    units: int,
    seed: int,
    alpha: float = 0.05,
    naive_every: int = 100,
    chunk: int = 1000,
) -> Outcome:
    rng = np.random.default_rng(seed)
    zero = np.array([0.0])
    wealth = Wealth.start((sims,), 1)
    mixture: dict[str, np.ndarray] = {
        k: np.zeros(sims) for k in ("n_a", "n_b", "s_a", "s_b", "t", "phi", "phi2")
    }
    mixture_reject = np.zeros(sims, dtype=bool)
    threshold = math.log(1.0 / alpha)
    stop = np.full(sims, -1.0)
    naive_reject = np.zeros(sims, dtype=bool)
    # Running sums for the naive z-test.
    n = np.zeros((2, sims))
    s1 = np.zeros((2, sims))
    s2 = np.zeros((2, sims))
    done = 0
    while done < units:
        size = min(chunk, units - done)
        in_a = (rng.random((sims, size)) < scenario.weight_a).astype(np.float64)
        in_b = 1.0 - in_a
        means = np.where(in_a == 1.0, scenario.mean_a, scenario.mean_b)
        reward = _rewards(rng, means, scenario.reward)
        p_a = np.full((sims, size), scenario.weight_a)
        batch = Units(in_a, in_b, reward, p_a, 1.0 - p_a)
        # One unit at a time would be slow; the running maximum over a chunk is what
        # matters, and the first crossing is recovered from it chunk by chunk.
        before = wealth.max_log_k[:, 0].copy()
        wealth = advance(wealth, batch, zero, low=0.0, high=1.0)
        crossed = (before < threshold) & (wealth.max_log_k[:, 0] >= threshold)
        stop = np.where(crossed & (stop < 0), done + size, stop)
        mixture_reject |= (
            _mixture_log_p(mixture, batch, alpha, t_opt=10_000) <= math.log(alpha)
        ).any(axis=1)
        for start in range(0, size, naive_every):
            end = min(start + naive_every, size)
            for arm, mask in ((0, in_a[:, start:end]), (1, in_b[:, start:end])):
                r = reward[:, start:end] * mask
                n[arm] += mask.sum(axis=1)
                s1[arm] += r.sum(axis=1)
                s2[arm] += (r * r).sum(axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                mean = s1 / n
                var = np.maximum(s2 / n - mean**2, 0) * n / np.maximum(n - 1, 1)
                se = np.sqrt(var[0] / n[0] + var[1] / n[1])
                z = np.where(se > 0, (mean[0] - mean[1]) / se, 0.0)
            enough = np.minimum(n[0], n[1]) >= MIN_PER_ARM
            naive_reject |= enough & (2 * stats.norm.sf(np.abs(z)) < alpha)
        done += size
    stopped = stop[stop > 0]
    return Outcome(
        scenario=scenario.name,
        sims=sims,
        units=units,
        sequential_rejections=int((stop > 0).sum()),
        mixture_rejections=int(mixture_reject.sum()),
        naive_rejections=int(naive_reject.sum()),
        median_stop=float(np.median(stopped)) if stopped.size else None,
    )


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    lo = stats.beta.ppf((1 - level) / 2, k, n - k + 1) if k > 0 else 0.0
    hi = stats.beta.ppf(1 - (1 - level) / 2, k + 1, n - k) if k < n else 1.0
    return float(lo), float(hi)


A_A = [
    Scenario("A/A 50/50, Bernoulli(0.10)", 0.5, 0.10, 0.10),
    Scenario("A/A 50/50, Bernoulli(0.50)", 0.5, 0.50, 0.50),
    Scenario("A/A 80/20, Bernoulli(0.10)", 0.8, 0.10, 0.10),
    Scenario("A/A 90/10, Bernoulli(0.02)", 0.9, 0.02, 0.02),
    Scenario("A/A 95/5, Bernoulli(0.01)", 0.95, 0.01, 0.01),
    Scenario("A/A 50/50, continuous, mean 0.30", 0.5, 0.30, 0.30, reward="continuous"),
]
POWER = [
    Scenario("A/B 50/50, 0.10 vs 0.12", 0.5, 0.12, 0.10),
    Scenario("A/B 50/50, 0.10 vs 0.15", 0.5, 0.15, 0.10),
    Scenario("A/B 90/10, 0.10 vs 0.15", 0.9, 0.10, 0.15),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sims", type=int, default=2000)
    parser.add_argument("--units", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument(
        "--chunk", type=int, default=250, help="units per step; stop times are rounded up to it"
    )
    args = parser.parse_args()
    print(f"sims={args.sims} units={args.units} alpha={args.alpha} seed={args.seed}")
    print(
        "| scenario | rejected: betting e-process (this project) | 95% CI | "
        "Gaussian-mixture CS | naive z-test every 100 | median stop (units) | seconds |"
    )
    print("|---|---|---|---|---|---|---|")
    for index, scenario in enumerate(A_A + POWER):
        started = time.perf_counter()
        out = simulate(
            scenario,
            sims=args.sims,
            units=args.units,
            seed=args.seed + index,
            alpha=args.alpha,
            chunk=args.chunk,
        )
        lo, hi = clopper_pearson(out.sequential_rejections, out.sims)
        median = f"{out.median_stop:.0f}" if out.median_stop is not None else "-"
        print(
            f"| {scenario.name} "
            f"| {out.sequential_rate:.2%} ({out.sequential_rejections}/{out.sims}) "
            f"| [{lo:.2%}, {hi:.2%}] | {out.mixture_rate:.2%} | {out.naive_rate:.2%} | {median} "
            f"| {time.perf_counter() - started:.1f} |"
        )


if __name__ == "__main__":
    main()
