"""Statistics benchmark: the A/B test's false positives and power, and off-policy interval coverage.

    .venv/bin/python bench/stats.py aa      # A/A false-positive grid, a look after every unit
    .venv/bin/python bench/stats.py power   # units to 80% power against the fixed-horizon z-test
    .venv/bin/python bench/stats.py ope     # OPE 95% interval coverage (needs scikit-learn)

Every simulated experiment runs the production code (experiments.sequential,
trainer.ope) on leading batch axes; each prints one Markdown table for
BENCHMARKS.md with the grid sizes it used.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.planning import fixed_horizon_units
from experiments.sequential import Units, Wealth, log_wealth_path

ZERO = np.array([0.0])


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    lo = stats.beta.ppf((1 - level) / 2, k, n - k + 1) if k > 0 else 0.0
    hi = stats.beta.ppf(1 - (1 - level) / 2, k + 1, n - k) if k < n else 1.0
    return float(lo), float(hi)


@dataclass
class Runs:
    """First unit at which each simulated experiment was significant (-1: never), and z-test results."""

    stop: np.ndarray
    z_reject_at: dict[int, np.ndarray]


def run(
    *,
    sims: int,
    units: int,
    share_a: float,
    mean_a: float,
    mean_b: float,
    seed: int,
    alpha: float = 0.05,
    z_checkpoints: tuple[int, ...] = (),
    block: int = 2048,
) -> Runs:
    """Simulate `sims` Bernoulli A/B experiments of `units` units; look after every unit."""
    rng = np.random.default_rng(seed)
    state = Wealth.start((sims,), 1)
    threshold = math.log(1.0 / alpha)
    stop = np.full(sims, -1, dtype=np.int64)
    n = np.zeros((2, sims))
    s = np.zeros((2, sims))
    z_reject: dict[int, np.ndarray] = {}
    done = 0
    while done < units:
        size = min(block, units - done)
        in_a = (rng.random((sims, size)) < share_a).astype(np.float64)
        reward = (rng.random((sims, size)) < np.where(in_a == 1.0, mean_a, mean_b)).astype(
            np.float64
        )
        p_a = np.full((sims, size), share_a)
        batch = Units(in_a, 1.0 - in_a, reward, p_a, 1.0 - p_a)
        state, log_k = log_wealth_path(state, batch, ZERO, low=0.0, high=1.0)
        crossed = log_k[..., 0] >= threshold
        first = np.where(crossed.any(axis=1), crossed.argmax(axis=1) + done + 1, -1)
        stop = np.where((stop < 0) & (first > 0), first, stop)
        for checkpoint in z_checkpoints:
            if done < checkpoint <= done + size:
                k = checkpoint - done
                n_c = n + np.stack([in_a[:, :k].sum(1), (1 - in_a[:, :k]).sum(1)])
                s_c = s + np.stack(
                    [(in_a * reward)[:, :k].sum(1), ((1 - in_a) * reward)[:, :k].sum(1)]
                )
                z_reject[checkpoint] = _z_test(n_c, s_c, alpha)
        n += np.stack([in_a.sum(1), (1 - in_a).sum(1)])
        s += np.stack([(in_a * reward).sum(1), ((1 - in_a) * reward).sum(1)])
        done += size
    return Runs(stop, z_reject)


def _z_test(n: np.ndarray, s: np.ndarray, alpha: float) -> np.ndarray:
    """Two-sided unpooled two-proportion z-test at one fixed sample size."""
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = s / n
        se = np.sqrt(mean[0] * (1 - mean[0]) / n[0] + mean[1] * (1 - mean[1]) / n[1])
        z = np.where(se > 0, (mean[0] - mean[1]) / se, 0.0)
    return np.asarray(2 * stats.norm.sf(np.abs(z)) < alpha)


# -- A/A ----------------------------------------------------------------------------------


def aa(args: argparse.Namespace) -> None:
    rates = [float(x) for x in args.rates.split(",")]
    splits = [float(x) for x in args.splits.split(",")]
    print(
        f"A/A: {args.sims} experiments per cell x {args.units:,} units, a look after every unit, "
        f"alpha {args.alpha}; cell = rejected / experiments (Clopper-Pearson 95% upper bound)"
    )
    header = "| rate \\ share of arm a | " + " | ".join(f"{s:g}" for s in splits) + " |"
    print(header)
    print("|---" * (len(splits) + 1) + "|")
    worst = 0.0
    started = time.perf_counter()
    for i, rate in enumerate(rates):
        cells = []
        for j, split in enumerate(splits):
            runs = run(
                sims=args.sims,
                units=args.units,
                share_a=split,
                mean_a=rate,
                mean_b=rate,
                seed=args.seed + 100 * i + j,
                alpha=args.alpha,
            )
            k = int((runs.stop > 0).sum())
            worst = max(worst, k / args.sims)
            cells.append(f"{k / args.sims:.1%} ({clopper_pearson(k, args.sims)[1]:.1%})")
        print(f"| {rate:g} | " + " | ".join(cells) + " |", flush=True)
    print(f"worst cell {worst:.2%}; {time.perf_counter() - started:.0f} s")


# -- power --------------------------------------------------------------------------------


def power(args: argparse.Namespace) -> None:
    effects = [float(x) for x in args.effects.split(",")]
    rates = [float(x) for x in args.rates.split(",")]
    print(
        f"Power: {args.sims} experiments per cell, share of arm a {args.share}, alpha {args.alpha}, "
        f"horizon {args.horizon:g} x the z-test's units; n_z = fixed-horizon z-test units for 80% power"
    )
    print(
        "| rate | effect | n_z | z-test power at n_z | sequential power at n_z | "
        "at 1.5 n_z | units for 80% (sequential) | / n_z |"
    )
    print("|---|---|---|---|---|---|---|---|")
    started = time.perf_counter()
    for i, rate in enumerate(rates):
        for j, effect in enumerate(effects):
            if rate + effect >= 1:
                continue
            n_z = fixed_horizon_units(
                rate, effect, share=args.share, alpha=args.alpha, power=0.8
            ).total
            horizon = math.ceil(args.horizon * n_z)
            runs = run(
                sims=args.sims,
                units=horizon,
                share_a=args.share,
                mean_a=rate + effect,
                mean_b=rate,
                seed=args.seed + 100 * i + j,
                alpha=args.alpha,
                z_checkpoints=(n_z,),
            )
            stop = np.where(runs.stop > 0, runs.stop, np.inf)
            at = float((stop <= n_z).mean())
            at15 = float((stop <= 1.5 * n_z).mean())
            q80 = float(np.quantile(stop, 0.8))
            units80 = f"{q80:,.0f}" if math.isfinite(q80) else f"> {horizon:,}"
            ratio = f"{q80 / n_z:.2f}" if math.isfinite(q80) else f"> {args.horizon:g}"
            z_power = float(runs.z_reject_at[n_z].mean())
            print(
                f"| {rate:g} | {effect:g} | {n_z:,} | {z_power:.1%} | {at:.1%} | {at15:.1%} "
                f"| {units80} | {ratio} |",
                flush=True,
            )
    print(f"{time.perf_counter() - started:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("aa", help="A/A false positives")
    p.add_argument("--sims", type=int, default=1000)
    p.add_argument("--units", type=int, default=20_000)
    p.add_argument("--rates", default="0.01,0.05,0.2,0.5,0.8,0.95,0.99")
    p.add_argument("--splits", default="0.01,0.05,0.2,0.5,0.8,0.95,0.99")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=17_000)
    p.set_defaults(fn=aa)
    p = sub.add_parser("power", help="units to 80% power")
    p.add_argument("--sims", type=int, default=1000)
    p.add_argument("--effects", default="0.005,0.01,0.02,0.05,0.1")
    p.add_argument("--rates", default="0.05,0.1,0.2,0.5")
    p.add_argument("--share", type=float, default=0.5)
    p.add_argument("--horizon", type=float, default=2.5)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=27_000)
    p.set_defaults(fn=power)
    args = parser.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
