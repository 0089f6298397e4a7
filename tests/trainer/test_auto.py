"""`learner: auto`: every candidate learns, the gate's best is published and named."""

from __future__ import annotations

import math
import random

import pytest

from banditgate.auto import CANDIDATES
from banditgate.errors import InvalidPolicy
from banditgate.linear_thompson import MAGIC
from banditgate.policy import (
    ActionSet,
    LinearThompsonPolicy,
    VWPolicy,
    build_policy,
    sample_index,
)
from banditgate.registry import PolicyRegistry
from banditgate.spec import ExperimentSpec, parse_spec
from banditgate.store import ExperimentStore
from tests.trainer.conftest import uniform_log, write_joined
from tests.trainer.test_trainer import Clock, drain
from trainer.learner import AutoLearner, Example, new_learner
from trainer.loop import TrainingLoop
from trainer.worker import Trainer

# A different best arm per tier: a per-context learner is needed.
RATES = {"gold": [0.7, 0.4, 0.5], "silver": [0.3, 0.6, 0.4], "bronze": [0.4, 0.4, 0.6]}


def auto_spec(name: str = "auto", **policy: object) -> ExperimentSpec:
    return parse_spec(
        {
            "name": name,
            "arms": [{"name": arm, "url": "http://127.0.0.1:1"} for arm in ("a", "b", "c")],
            "context": {"body": ["user.tier"]},
            "policy": {
                "learner": "auto",
                "update": {"every_events": 200, "every_s": 5, "warmup_events": 200},
                **policy,
            },
        }
    )


def play(spec: ExperimentSpec, n: int, seed: int = 0) -> tuple[TrainingLoop, list[dict]]:
    """Serve the tiered world with the loop's policy, as the world suite does."""
    loop = TrainingLoop(spec, new_learner(spec), build_policy(spec, None, 0), 0)
    actions = ActionSet.from_spec(spec)
    rng = random.Random(seed)
    published = []
    for t in range(n):
        tier = list(RATES)[rng.randrange(3)]
        context = {"user.tier": tier}
        pmf = loop.serving.probabilities(context, actions)
        chosen = sample_index(pmf, f"{seed}-{t}", loop.serving_version)
        reward = 1.0 if rng.random() < RATES[tier][chosen] else 0.0
        loop.observe(Example(context, actions, chosen, pmf[chosen], reward))
        if loop.due(0.0):
            outcome = loop.update()
            if outcome.publish and outcome.model is not None:
                version = loop.serving_version + 1
                loop.published(build_policy(spec, outcome.model, version), version)
                published.append(outcome.record)
    return loop, published


def test_every_candidate_learns_and_the_best_passing_one_is_published_and_named() -> None:
    loop, published = play(auto_spec(), 4000)
    assert isinstance(loop.learner, AutoLearner)
    assert set(loop.learner.members) == set(CANDIDATES) == set(loop.challengers)
    assert {m.n_examples for m in loop.learner.members.values()} == {4000}
    assert published
    for record in published:
        candidates = record["candidates"]
        assert set(candidates) == set(CANDIDATES)
        winner = record["learner"]
        assert candidates[winner]["passed"]
        gains = {
            kind: c["gain"]["value"]
            for kind, c in candidates.items()
            if c["passed"] and c["gain"]["value"] is not None
        }
        assert gains[winner] == max(gains.values())
        assert record["reason"].startswith(f"{winner} is the best candidate")
        assert all(kind in record["reason"] for kind in gains)
    # The serving policy is the winner's: a router builds it from the model alone.
    last = published[-1]["learner"]
    expected = LinearThompsonPolicy if last == "linear_thompson" else VWPolicy
    assert isinstance(loop.serving, expected)


def test_on_a_world_that_needs_context_the_served_policy_earns_near_the_oracle() -> None:
    loop, published = play(auto_spec(), 6000, seed=1)
    actions = ActionSet.from_spec(loop.spec)
    for tier, rates in RATES.items():
        pmf = loop.serving.probabilities({"user.tier": tier}, actions)
        assert pmf[rates.index(max(rates))] > 0.8, (tier, pmf)
    winners = [record["learner"] for record in published]
    assert set(winners) <= set(CANDIDATES)
    # Per-tier rewards are what linear_thompson models directly: it wins most gates here.
    assert winners.count("linear_thompson") > len(winners) / 2, winners


def test_the_auto_state_round_trips_through_a_checkpoint() -> None:
    spec = auto_spec()
    loop, _ = play(spec, 600)
    restored = new_learner(spec, state=loop.learner.state_bytes())
    assert isinstance(restored, AutoLearner)
    assert {k: m.n_examples for k, m in restored.members.items()} == {k: 600 for k in CANDIDATES}
    with pytest.raises(InvalidPolicy, match="auto learner"):
        new_learner(spec, state=new_learner(auto_spec(learner="vw")).state_bytes())


def test_a_warm_start_continues_the_serving_learner_only() -> None:
    spec = auto_spec()
    loop, _ = play(spec, 600)
    model = loop.learner.members["linear_thompson"].model_bytes()
    assert model.startswith(MAGIC)
    warm = new_learner(spec, model=model)
    assert isinstance(warm, AutoLearner)
    assert warm.members["linear_thompson"].n_examples == 600
    assert warm.members["vw"].n_examples == 0


async def test_the_trainer_publishes_versions_that_name_the_winning_learner(redis, name):
    spec = auto_spec(name)
    await ExperimentStore(redis).put(spec)
    accuracy = {"a": 0.2, "b": 0.8, "c": 0.5}
    await write_joined(redis, name, uniform_log(name, 1600, accuracy, seed=3))  # type: ignore[arg-type]
    trainer = Trainer(redis=redis, clock=Clock(), experiments=[name], batch=200)
    await drain(trainer)
    await trainer.close()
    registry = PolicyRegistry(redis)
    versions = await registry.versions(name)
    assert versions
    for version in versions:
        assert version.source == "trainer" and version.learner in CANDIDATES
        assert set(version.ope["candidates"]) == set(CANDIDATES)
        assert version.note.startswith(f"{version.learner} is the best candidate")
        model = await registry.model(name, version.version)
        policy = build_policy(spec, model, version.version)
        assert policy.learner == version.learner
    latest = versions[-1]
    policy = build_policy(spec, await registry.model(name, latest.version), latest.version)
    assert policy.probabilities({}, ActionSet.from_spec(spec))[1] > 0.8


async def test_the_registry_records_the_learner_and_refuses_a_mislabelled_model(redis, name):
    spec = auto_spec(name)
    await ExperimentStore(redis).put(spec)
    loop, _ = play(spec, 400)
    registry = PolicyRegistry(redis)
    thompson = loop.learner.members["linear_thompson"].model_bytes()
    vw = loop.learner.members["vw"].model_bytes()
    assert (await registry.publish(name, thompson)).learner == "linear_thompson"
    assert (await registry.publish(name, vw, learner="auto")).learner == "vw"
    with pytest.raises(InvalidPolicy, match="linear_thompson"):
        await registry.publish(name, thompson, learner="vw")
    with pytest.raises(InvalidPolicy, match="uses the auto learner, not thompson"):
        await registry.publish(name, vw, learner="thompson")
    assert [v.version for v in await registry.versions(name)] == [1, 2]


def test_estimates_are_finite_for_both_candidates() -> None:
    _, published = play(auto_spec(), 2000, seed=2)
    for record in published:
        for candidate in record["candidates"].values():
            assert candidate["gain"] is not None and math.isfinite(candidate["gain"]["value"])
