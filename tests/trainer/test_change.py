"""Change detection: silent on stationary rewards, fires on a shift, and the loop's response."""

from __future__ import annotations

import random

import pytest

from banditgate.errors import InvalidSpec
from banditgate.policy import ActionSet, build_policy
from banditgate.registry import PolicyRegistry
from banditgate.spec import ChangeSpec, parse_spec
from banditgate.store import ExperimentStore
from tests.trainer.conftest import uniform_log, write_joined
from tests.trainer.test_trainer import Clock, drain, spec_for
from trainer.change import ChangeDetector, cell_of
from trainer.learner import Example, VWLearner, new_learner
from trainer.loop import TrainingLoop
from trainer.worker import Trainer


def feed(detector: ChangeDetector, rng: random.Random, n: int, rates: dict, start: int = 0) -> int:
    """n rewards, each of a random arm and cell, with the cell's rate; the alarms raised."""
    alarms = 0
    for i in range(start, start + n):
        arm = rng.choice(["a", "b"])
        tier = rng.choice(["free", "pro"])
        reward = 1.0 if rng.random() < rates[(arm, tier)] else 0.0
        detector.add(arm, {"tier": tier, "score": rng.random()}, reward, i)
        if i % 200 == 0:
            alarms += len(detector.check())
    return alarms


RATES = {("a", "free"): 0.55, ("a", "pro"): 0.2, ("b", "free"): 0.45, ("b", "pro"): 0.05}


def test_stationary_rewards_raise_no_alarm() -> None:
    detector = ChangeDetector(ChangeSpec())
    assert feed(detector, random.Random(1), 100_000, RATES) == 0
    assert detector.alarms == 0


def test_a_shift_in_one_cell_is_found_in_that_cell_within_a_few_windows() -> None:
    detector = ChangeDetector(ChangeSpec())
    rng = random.Random(2)
    assert feed(detector, rng, 10_000, RATES) == 0
    shifted = {**RATES, ("a", "free"): 0.35}
    found = []
    for i in range(10_000, 14_000):
        arm, tier = rng.choice(["a", "b"]), rng.choice(["free", "pro"])
        reward = 1.0 if rng.random() < shifted[(arm, tier)] else 0.0
        detector.add(arm, {"tier": tier, "score": 0.5}, reward, i)
        if i % 200 == 0:
            found = detector.check()
            if found:
                break
    assert len(found) == 1
    (alarm,) = found
    assert alarm.arm == "a" and alarm.cell == (("tier", "free"),)
    assert alarm.before == pytest.approx(0.55, abs=0.05) and alarm.after < 0.45
    assert i - 10_000 <= 2_000  # about 4 x 200 of the cell's rewards, checked every 200
    assert 10_000 - 800 <= alarm.since < i  # the start of its recent window (~800 events)


def test_the_cell_is_the_categorical_context() -> None:
    assert cell_of({"tier": "pro", "x": 0.3, "t.caps": True, "tags": ["a"]}) == (
        ("t.caps", True),
        ("tags", ("a",)),
        ("tier", "pro"),
    )


def test_detector_off_watches_nothing() -> None:
    detector = ChangeDetector(ChangeSpec(detector="off"))
    detector.add("a", {}, 1.0, 0)
    assert detector.samples == {} and detector.check() == []


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"discount": 0}, "policy.change.discount"),
        ({"discount": 1.5}, "policy.change.discount"),
        ({"discount": -0.1}, "policy.change.discount"),
        ({"threshold": 1}, "policy.change.threshold"),
        ({"window": 5}, "policy.change.window"),
        ({"min_shift": 0}, "policy.change.min_shift"),
        ({"detector": "adwin"}, "policy.change.detector"),
        ({"explore_epsilon": 2}, "policy.change.explore_epsilon"),
    ],
)
def test_a_bad_change_setting_is_refused_with_its_field(change: dict, path: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        parse_spec(
            {"name": "x", "arms": [{"name": "a", "url": "http://h"}], "policy": {"change": change}}
        )
    assert caught.value.field == path
    assert path in caught.value.message


def loop_for(**change) -> tuple[TrainingLoop, ActionSet]:  # type: ignore[no-untyped-def]
    spec = parse_spec(
        {
            "name": "change",
            "arms": [{"name": "a", "url": "http://h:1"}, {"name": "b", "url": "http://h:2"}],
            "policy": {"change": change},
        }
    )
    loop = TrainingLoop(spec, new_learner(spec), build_policy(spec, None, 0), 0)
    return loop, ActionSet.from_spec(spec)


def run(loop: TrainingLoop, actions: ActionSet, rng: random.Random, n: int, rates) -> list:  # type: ignore[no-untyped-def]
    outcomes = []
    for _ in range(n):
        pmf = loop.serving.probabilities({}, actions)
        index = rng.choices(range(len(pmf)), pmf)[0]
        reward = 1.0 if rng.random() < rates[index] else 0.0
        loop.observe(Example({}, actions, index, pmf[index], reward))
        if loop.due(0.0):
            outcome = loop.update()
            outcomes.append(outcome)
            if outcome.publish and outcome.model is not None:
                version = loop.serving_version + 1
                loop.published(build_policy(loop.spec, outcome.model, version), version)
    return outcomes


def test_the_loop_forgets_widens_and_publishes_on_a_change() -> None:
    loop, actions = loop_for()
    rng = random.Random(3)
    before = run(loop, actions, rng, 4_000, [0.7, 0.3])
    assert loop.serving_version > 0 and not any("change" in o.record for o in before)
    assert loop.serving.probabilities({}, actions)[0] > 0.9
    after = run(loop, actions, rng, 3_000, [0.2, 0.5])
    changes = [o for o in after if "change" in o.record]
    assert changes, "the change was not detected"
    first = changes[0]
    assert first.publish and first.record["decision"] == "published"
    detection = first.record["change"]
    assert detection["alarms"][0]["arm"] == "a"
    assert detection["relearned"] < 2_000 and detection["explore_events"] == 2_000
    assert first.record["changes"] == [detection]  # the lineage of the published version
    # Once the change is learned, the traffic follows it.
    assert loop.serving.probabilities({}, actions)[1] > 0.9
    # The restarted VW learner starts arms at the middle of the reward range, and a
    # checkpoint keeps that.
    assert isinstance(loop.learner, VWLearner) and loop.learner.cost_offset == 0.5
    restored = new_learner(loop.spec, state=loop.learner.state_bytes())
    assert isinstance(restored, VWLearner) and restored.cost_offset == 0.5


def test_stationary_traffic_through_the_loop_raises_no_alarm() -> None:
    loop, actions = loop_for()
    outcomes = run(loop, actions, random.Random(4), 8_000, [0.5, 0.4])
    assert loop.detector.alarms == 0
    assert not any("change" in o.record for o in outcomes)


async def test_the_trainer_counts_a_change_and_names_it_in_the_lineage(redis, name) -> None:
    spec = spec_for(name)
    await ExperimentStore(redis).put(spec)
    await write_joined(redis, name, uniform_log(name, 3_000, {"a": 0.7, "b": 0.3}, seed=1))
    trainer = Trainer(redis=redis, clock=Clock(), experiments=[name])
    await drain(trainer)
    registry = PolicyRegistry(redis)
    assert await registry.versions(name)
    await write_joined(redis, name, uniform_log(name, 3_000, {"a": 0.2, "b": 0.6}, seed=2))
    await drain(trainer)
    assert trainer.changes >= 1
    assert int(await redis.hget(f"bg:{{{name}}}:trainer:state", "changes")) == trainer.changes
    notes = [v.note for v in await registry.versions(name)]
    assert any("after a change detected" in note and "a 0.6" in note for note in notes), notes


def test_only_real_rewards_are_watched() -> None:
    """Defaults join a window late: their share follows old traffic, not the arm's reward."""
    loop, actions = loop_for()
    for i in range(500):
        loop.observe(Example({}, actions, 0, 0.5, 0.0, rewarded=i % 2 == 0))
    (sample,) = loop.detector.samples.values()
    assert len(sample.recent) + sample.n == 250


def test_an_added_arm_is_explored_without_forgetting() -> None:
    spec = parse_spec(
        {
            "name": "added",
            "arms": [
                {"name": "a", "url": "http://h:1"},
                {"name": "b", "url": "http://h:2"},
                {"name": "c", "url": "http://h:3"},
            ],
        }
    )
    loop = TrainingLoop(spec, new_learner(spec), build_policy(spec, None, 0), 0)
    full = ActionSet.from_spec(spec)
    two = ActionSet(full.names[:2], full.lines[:2])
    rng = random.Random(5)
    run(loop, two, rng, 3_000, [0.6, 0.4])
    assert loop.serving_version > 0
    outcomes = run(loop, full, rng, 200, [0.6, 0.4, 0.8])
    (added,) = [o for o in outcomes if "change" in o.record]
    assert added.publish and added.record["change"]["arms_added"] == ["c"]
    assert added.record["change"]["relearned"] == 2_000  # everything remembered
    assert "arms added: c" in added.record["reason"]
    # The published restart explores: the new arm gets far more than the floor.
    assert loop.serving.probabilities({}, full)[2] >= 0.1
