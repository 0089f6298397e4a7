"""A fast, in-process stand-in for the learning loop, for screening policy settings.

    python bench/learning_sim.py '{"exploration": {"type": "epsilon"}}' ['{...}' ...]
                                 [--seeds 5] [--requests 10000] [--delay 400]

Same review traffic, classifiers, featurizer, event-id sampling and training loop
(trainer/loop.py: learner, challenger, gate) as the real system, without HTTP or
Redis: each request is decided by the serving policy and its reward reaches the
loop `--delay` requests later (as at ~700 req/s with 0.05-1 s reward delays). Settings that look good here are then measured end to end
with bench/learning.py, whose numbers are the ones in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import deque
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from banditgate.featurize import text_features
from banditgate.policy import ActionSet, build_policy, sample_index
from banditgate.spec import parse_spec
from banditgate_app.demo.reviews import SCENARIOS, make_review
from trainer.learner import Example, new_learner
from trainer.loop import TrainingLoop


def simulate(
    scenario: str, policy: dict[str, Any], *, requests: int, seed: int, delay: int
) -> tuple[float, int]:
    spec = parse_spec(
        {
            "name": "sim",
            "arms": [
                {"name": "bert-1", "url": "http://127.0.0.1:1", "features": {"size": "base"}},
                {"name": "bert-2", "url": "http://127.0.0.1:2", "features": {"size": "large"}},
            ],
            "context": {"text": "features[0]"},
            "policy": policy,
        }
    )
    rng = random.Random(seed)
    classifiers = SCENARIOS[scenario]
    actions = ActionSet.from_spec(spec)
    loop = TrainingLoop(spec, new_learner(spec), build_policy(spec, None, 0), 0)
    pending: deque[Example] = deque()
    total = 0.0
    for i in range(requests):
        review = make_review(rng)
        context = text_features(review.text)
        pmf = loop.serving.probabilities(context, actions)
        index = sample_index(pmf, f"{seed}-{i}", loop.serving_version)
        reward = 1.0 if classifiers[index].correct(review.text) else 0.0
        total += reward
        pending.append(Example(context, actions, index, pmf[index], reward))
        while len(pending) > delay:
            loop.observe(pending.popleft())
            if loop.due(0.0):
                outcome = loop.update()
                if outcome.publish and outcome.model is not None:
                    version = loop.serving_version + 1
                    loop.published(build_policy(spec, outcome.model, version), version)
    return total / requests, loop.serving_version


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "policies", nargs="*", default=["{}"], help="JSON merged into the spec's policy section"
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--delay", type=int, default=400)
    args = parser.parse_args()
    for raw in args.policies:
        policy = orjson.loads(raw)
        for scenario in ("seed", "contextual"):
            runs = [
                simulate(scenario, policy, requests=args.requests, seed=s, delay=args.delay)
                for s in range(args.seeds)
            ]
            rewards = [r for r, _ in runs]
            print(
                f"{raw} {scenario}: mean {sum(rewards) / len(rewards):.4f} min {min(rewards):.4f} | "
                + " ".join(f"{r:.4f}/{v}v" for r, v in runs),
                flush=True,
            )


if __name__ == "__main__":
    main()
