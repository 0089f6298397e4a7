"""Statistics benchmark: the A/B test's false positives and power, and off-policy interval coverage.

    .venv/bin/python bench/stats.py aa      # A/A false-positive grid, a look after every unit
    .venv/bin/python bench/stats.py power   # units to 80% power against the fixed-horizon z-test
    .venv/bin/python bench/stats.py ope     # OPE 95% interval coverage (pip install -e ".[bench]")

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


# -- OPE interval coverage ------------------------------------------------------------------


@dataclass
class Problem:
    """A supervised-to-bandit conversion: reward 1 when the action is the true class."""

    name: str
    labels: np.ndarray  # (N,)
    target: np.ndarray  # (N,) the evaluated policy's action (greedy on a good model)
    other: np.ndarray  # (N,) a second policy's action, for paired differences
    behaviour: np.ndarray  # (N,) the logging policy's greedy action (a weak model)
    reward_hat: np.ndarray  # (N, K) reward model, fitted on held-out data
    classes: int


def problems(seed: int) -> list[Problem]:
    from sklearn.datasets import load_breast_cancer, load_iris, load_wine, make_classification
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    many_x, many_y = make_classification(
        n_samples=3000,
        n_features=20,
        n_informative=12,
        n_classes=10,
        n_clusters_per_class=1,
        random_state=seed,
    )
    sources = [
        ("wine", *load_wine(return_X_y=True)),
        ("breast cancer", *load_breast_cancer(return_X_y=True)),
        ("iris", *load_iris(return_X_y=True)),
        ("synthetic, 10 classes", many_x, many_y),
    ]
    out = []
    for name, x, y in sources:
        x = StandardScaler().fit_transform(x)
        k = int(y.max()) + 1

        def fit(
            features: np.ndarray, rows: np.ndarray, x: np.ndarray = x, y: np.ndarray = y
        ) -> LogisticRegression:
            model = LogisticRegression(max_iter=2000)
            return model.fit(x[np.ix_(rows, features)], y[rows])

        everything = np.arange(x.shape[1])
        half = rng.permutation(len(y))[: len(y) // 2]
        good = fit(everything, np.arange(len(y)))
        few = rng.choice(x.shape[1], size=2, replace=False)
        weak = fit(few, np.arange(len(y)))
        other = fit(everything[: max(1, x.shape[1] // 4)], np.arange(len(y)))
        model = fit(everything, half)
        out.append(
            Problem(
                name,
                y,
                good.predict(x),
                other.predict(x[:, : max(1, x.shape[1] // 4)]),
                weak.predict(x[:, few]),
                model.predict_proba(x),
                k,
            )
        )
    return out


def normal(terms: np.ndarray, value: np.ndarray, truth: float) -> np.ndarray:
    """Which of the samples' normal 95% intervals cover the truth."""
    se = terms.std(axis=1, ddof=1) / math.sqrt(terms.shape[1])
    return np.asarray(np.abs(value - truth) <= 1.959963984540054 * se)


def boot(terms: np.ndarray, truth: float) -> np.ndarray:
    from trainer.ope import bootstrap_t

    lo, hi = bootstrap_t(terms)
    return np.asarray((lo <= truth) & (truth <= hi))


def ope(args: argparse.Namespace) -> None:
    from banditgate.intervals import WeightSums, cressie_read_interval
    from trainer.ope import Bounds, dr_interval, paired_difference

    floors = [float(x) for x in args.floors.split(",")]
    sizes = [int(x) for x in args.sizes.split(",")]
    print(
        f"OPE: {args.reps} logged samples per cell; logging policy epsilon-greedy on a weak model "
        "with every action's propensity at least the floor; target: greedy on a good model; "
        "95% intervals; coverage of the true value (and of the true difference to a second policy)"
    )
    head = [
        "data set",
        "K",
        "floor",
        "n",
        "true value",
        "IPS normal",
        "IPS Cressie-Read",
        "IPS bootstrap",
        "SNIPS normal",
        "SNIPS Cressie-Read",
        "DR normal",
        "DR bootstrap",
        "DR Cressie-Read",
        "DR diff normal",
        "DR diff bootstrap",
        "DR diff Cressie-Read",
        "RMSE IPS / SNIPS / DR",
        "mean width DR normal / CR, diff normal / CR",
    ]
    print("| " + " | ".join(head) + " |")
    print("|---" * len(head) + "|")
    started = time.perf_counter()
    worst: dict[str, float] = {}
    for problem in problems(args.seed):
        k = problem.classes
        truth = float((problem.target == problem.labels).mean())
        truth_diff = truth - float((problem.other == problem.labels).mean())
        rhat_target = problem.reward_hat[np.arange(len(problem.labels)), problem.target]
        rhat_other = problem.reward_hat[np.arange(len(problem.labels)), problem.other]
        for floor in floors:
            if floor * k > 1:
                continue
            for n in sizes:
                rng = np.random.default_rng(args.seed + int(1e4 * floor) + n + k)
                rows = rng.integers(0, len(problem.labels), size=(args.reps, n))
                explore = rng.random((args.reps, n)) < floor * k
                action = np.where(
                    explore, rng.integers(0, k, size=(args.reps, n)), problem.behaviour[rows]
                )
                greedy = action == problem.behaviour[rows]
                p = np.where(greedy, 1 - (k - 1) * floor, floor)
                r = (action == problem.labels[rows]).astype(np.float64)
                q = (action == problem.target[rows]).astype(np.float64)
                q_other = (action == problem.other[rows]).astype(np.float64)
                w = q / p
                rhat = problem.reward_hat[rows, action]
                ips_terms = w * r
                dr_terms = rhat_target[rows] + w * (r - rhat)
                diff_terms = rhat_target[rows] - rhat_other[rows] + (q - q_other) / p * (r - rhat)
                cover: dict[str, np.ndarray] = {}

                ips_value = ips_terms.mean(axis=1)
                cover["IPS normal"] = normal(ips_terms, ips_value, truth)
                cover["IPS bootstrap"] = boot(ips_terms, truth)
                total_w = w.sum(axis=1)
                snips_value = np.where(total_w > 0, ips_terms.sum(axis=1) / total_w, 0.0)
                linear = snips_value[:, None] + w * (r - snips_value[:, None]) / np.maximum(
                    total_w[:, None] / n, 1e-12
                )
                cover["SNIPS normal"] = normal(linear, snips_value, truth)
                cr = np.array(
                    [
                        cressie_read_interval(WeightSums.of(w[i], r[i]), wmax=float(1 / p[i].min()))
                        for i in range(args.reps)
                    ]
                )
                inside = (cr[:, 0] <= truth) & (truth <= cr[:, 1])
                cover["IPS Cressie-Read"] = inside
                cover["SNIPS Cressie-Read"] = inside
                dr_value = dr_terms.mean(axis=1)
                cover["DR normal"] = normal(dr_terms, dr_value, truth)
                cover["DR bootstrap"] = boot(dr_terms, truth)
                bounds = Bounds(wmax=float(1 / floor))
                dr_cr = np.array(
                    [
                        dr_interval(r[i], p[i], q[i], rhat[i], rhat_target[rows[i]], bounds)
                        for i in range(args.reps)
                    ]
                )
                cover["DR Cressie-Read"] = (dr_cr[:, 0] <= truth) & (truth <= dr_cr[:, 1])
                diff_cr = np.array(
                    [
                        paired_difference(
                            r[i],
                            p[i],
                            q[i],
                            q_other[i],
                            rhat[i],
                            rhat_target[rows[i]],
                            rhat_other[rows[i]],
                            interval="cressie_read",
                            bounds=bounds,
                        ).interval_pair()
                        for i in range(args.reps)
                    ]
                )
                cover["DR diff Cressie-Read"] = (diff_cr[:, 0] <= truth_diff) & (
                    truth_diff <= diff_cr[:, 1]
                )
                diff_value = diff_terms.mean(axis=1)
                cover["DR diff normal"] = normal(diff_terms, diff_value, truth_diff)
                cover["DR diff bootstrap"] = boot(diff_terms, truth_diff)
                rmse = [
                    math.sqrt(float(np.mean((v - truth) ** 2)))
                    for v in (ips_value, snips_value, dr_value)
                ]
                for key, hits in cover.items():
                    worst[key] = min(worst.get(key, 1.0), float(hits.mean()))
                widths = [
                    2
                    * 1.959963984540054
                    * float(dr_terms.std(axis=1, ddof=1).mean())
                    / math.sqrt(n),
                    float((dr_cr[:, 1] - dr_cr[:, 0]).mean()),
                    2
                    * 1.959963984540054
                    * float(diff_terms.std(axis=1, ddof=1).mean())
                    / math.sqrt(n),
                    float((diff_cr[:, 1] - diff_cr[:, 0]).mean()),
                ]
                cells = [f"{float(cover[h].mean()):.1%}" for h in head[5:-2]]
                print(
                    f"| {problem.name} | {k} | {floor:g} | {n} | {truth:.3f} | "
                    + " | ".join(cells)
                    + f" | {rmse[0]:.4f} / {rmse[1]:.4f} / {rmse[2]:.4f} | "
                    + " / ".join(f"{x:.3f}" for x in widths)
                    + " |",
                    flush=True,
                )
    print(
        "lowest coverage per interval: "
        + ", ".join(f"{key} {value:.1%}" for key, value in worst.items())
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
    p = sub.add_parser("ope", help="OPE interval coverage")
    p.add_argument("--reps", type=int, default=1000)
    p.add_argument("--floors", default="0.1,0.05,0.01")
    p.add_argument("--sizes", default="300,3000")
    p.add_argument("--seed", type=int, default=37_000)
    p.set_defaults(fn=ope)
    args = parser.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
