"""Learners on a few synthetic worlds, in process, against a per-segment Thompson reference.

    python bench/learner_worlds.py [--seeds 5] [--requests 8000] [--delay 200]
                                   [--policies '{"learner": "vw"}' '{"learner": "linear_thompson"}']

Each request's context (`user.tier` in the body) is featurized as the router does,
decided by the serving policy with event-id sampling, and its Bernoulli reward reaches
the training loop (trainer/loop.py: learner, challenger, gate, publish) `--delay`
requests later. The reference is a Beta-Bernoulli Thompson sampler per segment,
updated in batches of 200. Reported: average reward over the oracle (the best arm of
each segment), and the smallest share of the best arm in the last 2,000 requests
over the seeds (lock-in shows there). `--direct` serves the learner's model at every
update instead (no challenger, no gate), as the reference does: the learner alone.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from banditgate.featurize import Featurizer
from banditgate.policy import ActionSet, build_policy, sample_index
from banditgate.spec import parse_spec
from trainer.learner import Example, new_learner
from trainer.loop import TrainingLoop

# world -> segment -> success rate per arm
WORLDS: dict[str, dict[str, list[float]]] = {
    "5 arms, 0.50 to 0.38, no context": {"all": [0.50, 0.47, 0.44, 0.41, 0.38]},
    "3 arms x 3 segments": {
        "gold": [0.7, 0.5, 0.4],
        "silver": [0.4, 0.6, 0.5],
        "bronze": [0.45, 0.4, 0.55],
    },
    "2 arms, gap 0.05, 10 segments": {
        f"s{i}": ([0.45, 0.40] if i % 2 else [0.40, 0.45]) for i in range(10)
    },
}
TAIL = 2000


def simulate(
    world: dict[str, list[float]],
    policy: dict[str, Any],
    *,
    requests: int,
    seed: int,
    delay: int,
    direct: bool = False,
) -> tuple[float, float, float]:
    """(average reward, oracle average, smallest best-arm share in the tail over segments)."""
    arms = len(next(iter(world.values())))
    spec = parse_spec(
        {
            "name": "worlds",
            "arms": [{"name": f"arm-{i}", "url": "http://127.0.0.1:1"} for i in range(arms)],
            "context": {"body": ["user.tier"]},
            "policy": policy,
        }
    )
    rng = random.Random(seed)
    featurizer = Featurizer(spec.context)
    actions = ActionSet.from_spec(spec)
    loop = TrainingLoop(spec, new_learner(spec), build_policy(spec, None, 0), 0)
    pending: deque[Example] = deque()
    segments = list(world)
    total = oracle = 0.0
    tail: dict[str, list[int]] = {s: [0, 0] for s in segments}
    for i in range(requests):
        segment = segments[rng.randrange(len(segments))]
        context = featurizer.from_request({"user": {"tier": segment}}, {})
        pmf = loop.serving.probabilities(context, actions)
        index = sample_index(pmf, f"{seed}-{i}", loop.serving_version)
        rates = world[segment]
        reward = 1.0 if rng.random() < rates[index] else 0.0
        total += rates[index]
        oracle += max(rates)
        if i >= requests - TAIL:
            tail[segment][0] += index == rates.index(max(rates))
            tail[segment][1] += 1
        pending.append(Example(context, actions, index, pmf[index], reward))
        if len(pending) > delay and direct:
            # The learner's model serves as soon as an update is due: no challenger, no gate.
            learner = loop.learner
            learner.learn(pending.popleft())
            if learner.n_examples % spec.policy.update.every_events == 0:
                version = loop.serving_version + 1
                loop.serving = build_policy(spec, learner.model_bytes(), version)
                loop.serving_version = version
        elif len(pending) > delay:
            loop.observe(pending.popleft())
            if loop.due(0.0):
                outcome = loop.update()
                if outcome.publish and outcome.model is not None:
                    version = loop.serving_version + 1
                    loop.published(build_policy(spec, outcome.model, version), version)
    share = min(best / max(n, 1) for best, n in tail.values())
    return total / requests, oracle / requests, share


def thompson_reference(
    world: dict[str, list[float]], *, requests: int, seed: int, delay: int, batch: int = 200
) -> float:
    """Per-segment Beta-Bernoulli Thompson sampling, posteriors updated every `batch` rewards."""
    rng = random.Random(seed)
    draws = np.random.default_rng(seed)
    segments = list(world)
    arms = len(world[segments[0]])
    counts = {s: np.ones((2, arms)) for s in segments}
    serving = {s: c.copy() for s, c in counts.items()}
    pending: deque[tuple[str, int, float]] = deque()
    total = 0.0
    arrived = 0
    for _ in range(requests):
        segment = segments[rng.randrange(len(segments))]
        alpha, beta = serving[segment]
        index = int(np.argmax(draws.beta(alpha, beta)))
        rates = world[segment]
        reward = 1.0 if rng.random() < rates[index] else 0.0
        total += rates[index]
        pending.append((segment, index, reward))
        if len(pending) > delay:
            s, a, r = pending.popleft()
            counts[s][0, a] += r
            counts[s][1, a] += 1 - r
            arrived += 1
            if arrived % batch == 0:
                serving = {k: c.copy() for k, c in counts.items()}
    return total / requests


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=8000)
    parser.add_argument("--delay", type=int, default=200)
    parser.add_argument(
        "--direct",
        action="store_true",
        help="serve the learner's model at every update, without the challenger and gate",
    )
    parser.add_argument(
        "--policies",
        nargs="+",
        default=['{"learner": "vw"}', '{"learner": "linear_thompson"}'],
    )
    args = parser.parse_args()
    policies = [orjson.loads(p) for p in args.policies]
    for name, world in WORLDS.items():
        print(f"\n{name} ({args.requests} requests, {args.seeds} seeds, delay {args.delay})\n")
        print("| policy | reward / oracle (mean, min) | best arm's smallest tail share |")
        print("|---|---|---|")
        oracle_value = statistics.mean(max(rates) for rates in world.values())
        reference = [
            thompson_reference(world, requests=args.requests, seed=seed, delay=args.delay)
            / oracle_value
            for seed in range(args.seeds)
        ]
        for policy in policies:
            ratios, shares = [], []
            for seed in range(args.seeds):
                value, oracle, share = simulate(
                    world,
                    policy,
                    requests=args.requests,
                    seed=seed,
                    delay=args.delay,
                    direct=args.direct,
                )
                ratios.append(value / oracle)
                shares.append(share)
            print(
                f"| `{orjson.dumps(policy).decode()}` | {statistics.mean(ratios):.4f}, "
                f"{min(ratios):.4f} | {min(shares):.2f} |",
                flush=True,
            )
        print(
            f"| per-segment Thompson reference | {statistics.mean(reference):.4f}, "
            f"{min(reference):.4f} | - |"
        )


if __name__ == "__main__":
    main()
