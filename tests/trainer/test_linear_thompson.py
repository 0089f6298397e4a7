"""The contextual Thompson sampling learner: learns per context, replays, serialises, gates."""

from __future__ import annotations

import math
import random

import pytest

from banditgate.errors import InvalidPolicy
from banditgate.linear_thompson import MAGIC, LinearThompsonModel, floor_for
from banditgate.policy import ActionSet, build_policy, sample_index, validate_model
from banditgate.registry import PolicyRegistry
from banditgate.spec import ExperimentSpec, parse_spec
from banditgate.store import ExperimentStore
from tests.trainer.conftest import uniform_log, write_joined
from tests.trainer.test_trainer import Clock, drain
from trainer.learner import Example, LinearThompsonLearner, new_learner
from trainer.worker import Trainer

RATES = {"gold": [0.7, 0.4, 0.5], "silver": [0.3, 0.6, 0.4], "bronze": [0.4, 0.4, 0.6]}


def spec_for(name: str = "lt", **policy: object) -> ExperimentSpec:
    return parse_spec(
        {
            "name": name,
            "arms": [{"name": arm, "url": "http://127.0.0.1:1"} for arm in ("a", "b", "c")],
            "context": {"body": ["user.tier"]},
            "policy": {
                "learner": "linear_thompson",
                "update": {"every_events": 200, "every_s": 5},
                **policy,
            },
        }
    )


def trained(n: int = 3000, seed: int = 0) -> tuple[ExperimentSpec, LinearThompsonLearner]:
    spec = spec_for()
    learner = new_learner(spec)
    assert isinstance(learner, LinearThompsonLearner)
    actions = ActionSet.from_spec(spec)
    rng = random.Random(seed)
    for i in range(n):
        tier = list(RATES)[i % 3]
        chosen = rng.randrange(3)
        reward = 1.0 if rng.random() < RATES[tier][chosen] else 0.0
        learner.learn(Example({"user.tier": tier}, actions, chosen, 1 / 3, reward))
    return spec, learner


def test_it_learns_the_best_arm_of_each_context_and_its_reward() -> None:
    spec, learner = trained()
    actions = ActionSet.from_spec(spec)
    policy = validate_model(spec, learner.model_bytes())
    for tier, rates in RATES.items():
        pmf = policy.probabilities({"user.tier": tier}, actions)
        assert all(type(p) is float for p in pmf) and math.isclose(sum(pmf), 1.0)
        best = rates.index(max(rates))
        assert pmf[best] > 0.9, (tier, pmf)
        # The floor: min_arm_share (0.01) once evidence is plentiful.
        assert min(pmf) >= 0.01 - 1e-12
        estimates = learner.reward_estimates(Example({"user.tier": tier}, actions, 0, 1.0, 0.0))
        assert max(abs(e - r) for e, r in zip(estimates, rates, strict=True)) < 0.06


def test_cold_start_is_uniform_and_the_floor_shrinks_with_evidence() -> None:
    spec = spec_for()
    actions = ActionSet.from_spec(spec)
    cold = build_policy(spec, None, 0)
    assert cold.probabilities({"user.tier": "gold"}, actions) == pytest.approx([1 / 3] * 3)
    assert floor_for(0, 3, 0.0) == pytest.approx(1 / 3)
    assert floor_for(300, 3, 0.0) < floor_for(30, 3, 0.0) < floor_for(3, 3, 0.0)
    assert floor_for(10**9, 3, 0.01) == 0.01


def test_the_pmf_is_the_same_in_every_process_and_decisions_replay() -> None:
    spec, learner = trained(600)
    model = learner.model_bytes()
    actions = ActionSet.from_spec(spec)
    one, two = build_policy(spec, model, 4), build_policy(spec, model, 4)
    context = {"user.tier": "silver"}
    pmf = one.probabilities(context, actions)
    assert two.probabilities(context, actions) == pmf
    assert learner.probabilities(Example(context, actions, 0, 1.0, 0.0)) != []
    choices = [sample_index(pmf, f"e{i}", 4) for i in range(50)]
    assert choices == [sample_index(pmf, f"e{i}", 4) for i in range(50)]


def test_the_model_round_trips_and_keeps_learning() -> None:
    spec, learner = trained(900)
    raw = learner.model_bytes()
    again = new_learner(spec, state=learner.state_bytes())
    assert again.model_bytes() == raw and again.n_examples == 900
    _, more = trained(300, seed=1)
    assert LinearThompsonModel.from_bytes(more.model_bytes()).n_examples == 300


def test_models_of_other_learners_and_damaged_models_are_refused() -> None:
    spec, learner = trained(300)
    raw = learner.model_bytes()
    with pytest.raises(InvalidPolicy, match=r"not a linear_thompson model.*JSON"):
        validate_model(spec, b'{"alpha": {"a": 2}, "beta": {"a": 3}}')
    with pytest.raises(InvalidPolicy, match="not a linear_thompson model"):
        validate_model(spec, b"\x07\x00\x00\x00garbage")
    with pytest.raises(InvalidPolicy, match="damaged"):
        validate_model(spec, raw[:-8])
    with pytest.raises(InvalidPolicy, match="damaged"):
        validate_model(spec, MAGIC + b"\x00\x00\x00\x02{}")
    vw = parse_spec({**spec.model_dump(by_alias=True), "policy": {"learner": "vw"}})
    with pytest.raises(InvalidPolicy, match="not a VW model: this is a linear_thompson model"):
        validate_model(vw, raw)
    other = parse_spec(
        {
            **spec.model_dump(by_alias=True),
            "arms": [{"name": n, "url": "http://127.0.0.1:1"} for n in ("x", "y")],
        }
    )
    with pytest.raises(InvalidPolicy, match="different action set"):
        validate_model(other, raw)


async def test_it_learns_and_publishes_through_the_trainer(redis, name):
    spec = spec_for(name)
    await ExperimentStore(redis).put(spec)
    accuracy = {"a": 0.2, "b": 0.8, "c": 0.5}
    await write_joined(redis, name, uniform_log(name, 1200, accuracy, seed=3))  # type: ignore[arg-type]
    trainer = Trainer(redis=redis, clock=Clock(), experiments=[name], batch=200)
    await drain(trainer)
    await trainer.close()
    registry = PolicyRegistry(redis)
    latest = (await registry.versions(name))[-1]
    assert latest.learner == "linear_thompson" and latest.source == "trainer"
    policy = build_policy(spec, await registry.model(name, latest.version), latest.version)
    assert policy.probabilities({}, ActionSet.from_spec(spec))[1] > 0.9


def test_large_numeric_features_keep_the_posterior_well_conditioned() -> None:
    spec = spec_for()
    spec = parse_spec({**spec.model_dump(by_alias=True), "context": {"body": ["price"]}})
    learner = new_learner(spec)
    actions = ActionSet.from_spec(spec)
    rng = random.Random(2)
    for _ in range(2000):
        price = rng.choice([9.99, 1_250.0, 1e9])
        chosen = rng.randrange(3)
        best = 0 if price < 100 else 2
        reward = 1.0 if rng.random() < (0.7 if chosen == best else 0.3) else 0.0
        learner.learn(Example({"price": price}, actions, chosen, 1 / 3, reward))
    policy = validate_model(spec, learner.model_bytes())
    cheap = policy.probabilities({"price": 9.99}, actions)
    dear = policy.probabilities({"price": 1e9}, actions)
    assert cheap[0] > 0.8 and dear[2] > 0.8, (cheap, dear)
    assert all(math.isfinite(p) and p >= 0 for p in cheap + dear)
