"""Run policies on a world's traffic, seed by seed, and score them against the references.

The banditgate policy runs the trainer's own code: the router's featurizer and
policy (pmf with the floor, arm sampled from the event id), the training loop
(learner, challenger, gate) with the spec's update cadence, and each publish
swapped in as the serving policy. Only HTTP, Redis and the clock are left out:
a reward joins `delay` requests after its decision (the joiner emits at the first
reward), or `window` requests after it with the default reward if it never comes.
"""

from __future__ import annotations

import heapq
import random
import statistics
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from banditgate.featurize import ContextFeatures, Featurizer
from banditgate.policy import ActionSet, build_policy, sample_index
from banditgate.spec import ContextSpec, ExperimentSpec, parse_spec
from bench.worlds.library import World
from bench.worlds.references import REFERENCES
from trainer.learner import Example, new_learner
from trainer.loop import TrainingLoop

LAST = 2_000  # the lock-in check looks at this many final requests
RECOVERY_WINDOW = 200  # recovery: first trailing window of this size with >= 80% on the best
RECOVERY_SHARE = 0.8


@dataclass(frozen=True)
class Step:
    segment: str
    features: ContextFeatures
    cell: Hashable  # the features as a table key (what a tabular policy sees)
    arms: tuple[str, ...]
    means: dict[str, float]
    outcomes: dict[str, float]
    delay: int
    missing: bool

    @property
    def best(self) -> float:
        return max(self.means.values())


def traffic(world: World, seed: int) -> list[Step]:
    rng = random.Random(f"{world.name}/{seed}")
    featurizer = Featurizer(ContextSpec.model_validate(world.context))
    weights = world.weights or tuple(1.0 for _ in world.segments)
    steps = []
    for t in range(world.requests):
        (segment,) = rng.choices(world.segments, weights)
        request = world.request(rng, segment)
        features = featurizer.from_request(request.body, request.headers)
        means = world.means(t)[segment]
        arms = tuple(a for a in world.arms if a in means)
        if world.continuous:
            outcomes = {
                a: rng.betavariate(4.0 * means[a], 4.0 * (1.0 - means[a])) for a in world.arms
            }
        else:
            outcomes = {a: 1.0 if rng.random() < means.get(a, 0.0) else 0.0 for a in world.arms}
        missing = rng.random() < world.missing
        delay = rng.randint(*world.delay)
        cell = tuple(sorted(features.items()))
        steps.append(Step(segment, features, cell, arms, means, outcomes, delay, missing))
    return steps


@dataclass
class Agent:
    """Chooses an arm per request and learns from joined examples."""

    def choose(self, t: int, step: Step) -> tuple[str, Any]:
        raise NotImplementedError

    def learn(self, step: Step, arm: str, reward: float, token: Any) -> None:
        raise NotImplementedError

    def stats(self) -> dict[str, float]:
        return {}


def world_spec(world: World, policy: dict[str, Any]) -> ExperimentSpec:
    return parse_spec(
        {
            "name": "world",
            "arms": [
                {"name": a, "url": f"http://127.0.0.1:{9000 + i}"} for i, a in enumerate(world.arms)
            ],
            "context": world.context,
            "policy": policy,
            "reward": {"default": world.default_reward},
        }
    )


@dataclass
class Banditgate(Agent):
    world: World
    policy: dict[str, Any]
    seed: int
    spec: ExperimentSpec = field(init=False)
    loop: TrainingLoop = field(init=False)
    actions: dict[tuple[str, ...], ActionSet] = field(init=False, default_factory=dict)
    publishes: int = 0

    def __post_init__(self) -> None:
        self.spec = world_spec(self.world, self.policy)
        self.loop = TrainingLoop(
            self.spec, new_learner(self.spec), build_policy(self.spec, None, 0), 0
        )

    def _actions(self, arms: tuple[str, ...]) -> ActionSet:
        actions = self.actions.get(arms)
        if actions is None:
            full = ActionSet.from_spec(self.spec)
            lines = tuple(full.lines[full.names.index(a)] for a in arms)
            actions = self.actions[arms] = ActionSet(arms, lines)
        return actions

    def choose(self, t: int, step: Step) -> tuple[str, Any]:
        actions = self._actions(step.arms)
        pmf = self.loop.serving.probabilities(step.features, actions)
        index = sample_index(pmf, f"{self.seed}-{t}", self.loop.serving_version)
        return actions.names[index], (actions, index, pmf[index])

    def learn(self, step: Step, arm: str, reward: float, token: Any) -> None:
        actions, index, probability = token
        loop = self.loop
        example = Example(step.features, actions, index, probability, reward, not step.missing)
        loop.observe(example)
        if loop.due(0.0):
            outcome = loop.update()
            if outcome.publish and outcome.model is not None:
                version = loop.serving_version + 1
                loop.published(build_policy(self.spec, outcome.model, version), version)
                self.publishes += 1

    def stats(self) -> dict[str, float]:
        out: dict[str, float] = {"publishes": float(self.publishes)}
        detector = getattr(self.loop, "detector", None)
        if detector is not None:
            out["alarms"] = float(detector.alarms)
        return out


@dataclass
class Reference(Agent):
    kind: str
    seed: int
    impl: Any = field(init=False)

    def __post_init__(self) -> None:
        self.impl = REFERENCES[self.kind](self.seed)

    def choose(self, t: int, step: Step) -> tuple[str, Any]:
        return self.impl.choose(step.cell, step.arms), None

    def learn(self, step: Step, arm: str, reward: float, token: Any) -> None:
        self.impl.learn(step.cell, arm, reward)


def play(world: World, steps: Sequence[Step], agent: Agent) -> list[str]:
    """The arm chosen for every request; rewards join as the world's delays say."""
    arrivals: list[tuple[int, int, str, float, Any]] = []
    chosen = []
    for t, step in enumerate(steps):
        while arrivals and arrivals[0][0] <= t:
            _, i, arm, reward, token = heapq.heappop(arrivals)
            agent.learn(steps[i], arm, reward, token)
        arm, token = agent.choose(t, step)
        chosen.append(arm)
        if step.missing:
            heapq.heappush(arrivals, (t + world.window, t, arm, world.default_reward, token))
        else:
            heapq.heappush(arrivals, (t + step.delay, t, arm, step.outcomes[arm], token))
    return chosen


def _recovery(world: World, steps: Sequence[Step], on_best: Sequence[bool]) -> int | None:
    """Requests from the change until a trailing window is >= 80% on the best arm."""
    if world.change_at is None:
        return None
    start = world.change_at
    window = RECOVERY_WINDOW
    hits = sum(on_best[start : start + window])
    for end in range(start + window, len(steps) + 1):
        if hits >= RECOVERY_SHARE * window:
            return end - start
        if end < len(steps):
            hits += on_best[end] - on_best[end - window]
    return len(steps) - start  # never: all the requests left


def score(world: World, steps: Sequence[Step], chosen: Sequence[str]) -> dict[str, float | None]:
    rewards = [s.means[a] for s, a in zip(steps, chosen, strict=True)]
    oracle = [s.best for s in steps]
    on_best = [s.means[a] >= s.best - 1e-12 for s, a in zip(steps, chosen, strict=True)]
    out: dict[str, float | None] = {
        "reward": statistics.fmean(rewards),
        "of_oracle": sum(rewards) / sum(oracle),
        "best_share_last": statistics.fmean(on_best[-LAST:]),
        "after_change_of_oracle": None,
        "recovery": None,
    }
    if world.change_at is not None:
        c = world.change_at
        out["after_change_of_oracle"] = sum(rewards[c:]) / sum(oracle[c:])
        recovery = _recovery(world, steps, on_best)
        out["recovery"] = float(recovery) if recovery is not None else None
    return out


def _fixed(world: World, steps: Sequence[Step]) -> dict[str, dict[str, float | None]]:
    """Uniform, best fixed arm (among arms that serve throughout) and oracle, in expectation."""
    oracle = sum(s.best for s in steps)
    uniform = sum(statistics.fmean(s.means.values()) for s in steps)
    always = [a for a in world.arms if all(a in s.means for s in steps)]
    best_fixed = max(sum(s.means[a] for s in steps) for a in always)
    n = len(steps)
    out: dict[str, dict[str, float | None]] = {}
    for name, total in (("uniform", uniform), ("best-fixed", best_fixed), ("oracle", oracle)):
        out[name] = {"reward": total / n, "of_oracle": total / oracle}
    if world.change_at is not None:
        c = world.change_at
        after = sum(s.best for s in steps[c:])
        out["uniform"]["after_change_of_oracle"] = (
            sum(statistics.fmean(s.means.values()) for s in steps[c:]) / after
        )
        out["oracle"]["after_change_of_oracle"] = 1.0
    return out


Candidate = tuple[str, dict[str, Any]]  # (label, the spec's policy section)


def run_seed(
    world: World,
    seed: int,
    candidates: Sequence[Candidate],
    references: Sequence[str] = ("thompson", "ucb", "thompson-discounted"),
) -> dict[str, dict[str, float | None]]:
    steps = traffic(world, seed)
    results = _fixed(world, steps)
    for kind in references:
        results[kind] = score(world, steps, play(world, steps, Reference(kind, seed)))
    for label, policy in candidates:
        agent = Banditgate(world, policy, seed)
        results[label] = {**score(world, steps, play(world, steps, agent)), **agent.stats()}
    return results


def summarize(per_seed: Sequence[dict[str, dict[str, float | None]]]) -> dict[str, Any]:
    """Per policy and metric: mean, worst seed (lowest; highest for recovery and alarms)."""
    out: dict[str, Any] = {}
    for policy in per_seed[0]:
        metrics: dict[str, Any] = {}
        for metric in per_seed[0][policy]:
            values = [r[policy][metric] for r in per_seed]
            numbers = [float(v) for v in values if v is not None]
            if not numbers:
                continue
            high_is_bad = metric in ("recovery", "alarms")
            metrics[metric] = {
                "mean": statistics.fmean(numbers),
                "worst": max(numbers) if high_is_bad else min(numbers),
            }
        out[policy] = metrics
    return out


def run_world(
    world: World,
    seeds: Sequence[int],
    candidates: Sequence[Candidate],
    references: Sequence[str] = ("thompson", "ucb", "thompson-discounted"),
) -> dict[str, Any]:
    per_seed = [run_seed(world, seed, candidates, references) for seed in seeds]
    return {
        "world": world.name,
        "description": world.description,
        "requests": world.requests,
        "min_gap": world.min_gap(),
        "change_at": world.change_at,
        "stationary": world.stationary,
        "seeds": list(seeds),
        "policies": summarize(per_seed),
        "per_seed": per_seed,
    }
