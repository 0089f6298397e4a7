"""Learning quality: the demo, end to end, over several seeds and both scenarios.

    python bench/learning.py [--requests 10000] [--seeds 0 1 2] [--scenarios seed contextual]
                             [--policy '{"exploration": {"type": "epsilon", "epsilon": 0.05}}'] ...

Each run is the real system (`banditgate serve` on a fresh embedded Redis, real
HTTP backends, rewards posted to the webhook after a random delay). Reported per
run and as a mean: the bandit's average reward, a uniform A/B split, the best
fixed arm and the per-context oracle on the same traffic, and the median time
from a reward to a policy trained on it serving traffic. Several --policy values
(JSON merged into the spec's policy section) compare settings in one invocation.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from banditgate_app.demo.run import DemoOptions, run_demo


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--scenarios", nargs="+", default=["seed", "contextual"])
    parser.add_argument(
        "--policy", action="append", default=None, help="JSON; default: the spec defaults"
    )
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    explorations: list[dict[str, Any] | None] = (
        [orjson.loads(e) for e in args.policy] if args.policy else [None]
    )
    rows: list[dict[str, Any]] = []
    for exploration in explorations:
        label = "default" if exploration is None else orjson.dumps(exploration).decode()
        for scenario in args.scenarios:
            for seed in args.seeds:
                policy = {} if exploration is None else exploration
                options = DemoOptions(
                    requests=args.requests,
                    scenario=scenario,
                    seed=seed,
                    concurrency=args.concurrency,
                    policy=policy,
                )
                summary = asyncio.run(run_demo(options))["summary"]
                row = {
                    "exploration": label,
                    "scenario": scenario,
                    "seed": seed,
                    **{
                        k: summary[k]
                        for k in (
                            "avg_reward",
                            "ab_reward",
                            "best_arm_reward",
                            "oracle_reward",
                            "policy_versions",
                            "reward_to_policy_s",
                            "requests_per_s",
                        )
                    },
                }
                row["of_oracle"] = summary["avg_reward"] / summary["oracle_reward"]
                rows.append(row)
                print(
                    f"{label} {scenario} seed={seed}: bandit {row['avg_reward']:.4f} | A/B {row['ab_reward']:.4f} | "
                    f"best arm {row['best_arm_reward']:.4f} | oracle {row['oracle_reward']:.4f} "
                    f"({row['of_oracle']:.3f} of oracle) | {row['policy_versions']} versions | "
                    f"reward->policy {row['reward_to_policy_s'] or float('nan'):.1f} s",
                    flush=True,
                )
    print()
    print(
        "| policy | scenario | seeds | bandit | uniform A/B | best fixed arm | oracle | bandit/oracle | reward-to-policy (median) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for exploration in dict.fromkeys(r["exploration"] for r in rows):
        for scenario in args.scenarios:
            group = [
                r for r in rows if r["exploration"] == exploration and r["scenario"] == scenario
            ]
            if not group:
                continue

            def mean(key: str, group: list[dict[str, Any]] = group) -> float:
                return statistics.mean(r[key] for r in group if r[key] is not None)

            print(
                f"| `{exploration}` | {scenario} | {len(group)} | {mean('avg_reward'):.4f} "
                f"(min {min(r['avg_reward'] for r in group):.4f}) | {mean('ab_reward'):.4f} | "
                f"{mean('best_arm_reward'):.4f} | {mean('oracle_reward'):.4f} | {mean('of_oracle'):.3f} | "
                f"{mean('reward_to_policy_s'):.1f} s |"
            )
    if args.json is not None:
        args.json.write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
