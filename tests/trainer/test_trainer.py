from __future__ import annotations

import asyncio
import contextlib

import orjson

from banditgate import keys
from banditgate.policy import ActionSet, build_policy
from banditgate.registry import PolicyRegistry
from banditgate.spec import GateSpec, parse_spec
from banditgate.store import ExperimentStore
from tests.support import wait_for
from tests.trainer.conftest import uniform_log, write_joined
from trainer.gate import judge
from trainer.learner import VWLearner, to_example
from trainer.ope import PAIRED_INTERVAL
from trainer.worker import Trainer


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def spec_for(name: str, **policy) -> object:  # type: ignore[no-untyped-def]
    return parse_spec(
        {
            "name": name,
            "arms": [
                {"name": "a", "url": "http://127.0.0.1:1"},
                {"name": "b", "url": "http://127.0.0.1:2"},
            ],
            "policy": {"update": {"every_events": 200, "every_s": 5}, **policy},
        }
    )


async def drain(trainer: Trainer) -> int:
    total = 0
    while (n := await trainer.run_once()) > 0:
        total += n
    return total


async def test_the_trainer_learns_the_better_arm_and_publishes_through_the_gate(redis, name):
    spec = spec_for(name)
    await ExperimentStore(redis).put(spec)
    await write_joined(redis, name, uniform_log(name, 2000, {"a": 0.3, "b": 0.7}))
    trainer = Trainer(redis=redis, clock=Clock(), experiments=[name])
    assert await drain(trainer) == 2000
    registry = PolicyRegistry(redis)
    versions = await registry.versions(name)
    assert versions, "no version published"
    latest = versions[-1]
    assert (
        latest.source == "trainer" and latest.n_examples >= 1000
    )  # a snapshot, judged on later data
    assert latest.ope["candidate"]["dr"]["n"] > 0 and latest.trained_through
    policy = build_policy(spec, await registry.model(name, latest.version), latest.version)
    pmf = policy.probabilities({}, ActionSet.from_spec(spec))
    assert pmf[1] > 0.9
    records = [orjson.loads(r) for r in await redis.lrange(keys.candidates(name), 0, -1)]
    assert {r["decision"] for r in records} <= {"published", "rejected"}
    assert all(f"({PAIRED_INTERVAL} interval)" in r["reason"] for r in records if r["n"])
    assert all("numbers" in r and "reason" in r for r in records)
    await trainer.close()


async def test_the_gate_rejects_a_worse_candidate(redis, name):
    spec = spec_for(name, gate={"min_examples": 100, "margin": 0.0})
    await ExperimentStore(redis).put(spec)
    # Serving: a policy that has learned b is best. The trainer's learner starts out
    # convinced of the opposite; the log says b is best, so its candidate is worse.
    good, bad = VWLearner(spec.policy), VWLearner(spec.policy)
    for d, reward in uniform_log(name, 1500, {"a": 0.1, "b": 0.9}, seed=1):
        example = to_example(
            {"decision": d, "reward": reward, "rewarded": True, "n_rewards": 1, "joined_ts_ms": 0},
            spec,
        )
        assert example is not None
        good.learn(example)
    for d, reward in uniform_log(name, 3000, {"a": 0.9, "b": 0.1}, seed=2):
        example = to_example(
            {"decision": d, "reward": reward, "rewarded": True, "n_rewards": 1, "joined_ts_ms": 0},
            spec,
        )
        assert example is not None
        bad.learn(example)
    registry = PolicyRegistry(redis)
    serving = await registry.publish(name, good.model_bytes(), learner="vw", source="test")
    await redis.hset(
        keys.trainer_state(name), mapping={"learner": "vw", "state": bad.state_bytes()}
    )
    # The first update takes the challenger (the learner as it stands, still sure of
    # a); the next examples, which it has not learned and where b is best, judge it.
    await write_joined(redis, name, uniform_log(name, 200, {"a": 0.9, "b": 0.1}, seed=3))
    await write_joined(redis, name, uniform_log(name, 200, {"a": 0.1, "b": 0.9}, seed=4))
    trainer = Trainer(redis=redis, clock=Clock(), experiments=[name], batch=200)
    await drain(trainer)
    assert await registry.current_version(name) == serving.version
    records = [orjson.loads(r) for r in await redis.lrange(keys.candidates(name), 0, -1)]
    assert records and {r["decision"] for r in records} == {"rejected"}
    record = records[-1]  # the first verdict
    assert record["n"] == 200 and "replaced by a fresh challenger" in record["reason"]
    diff = record["numbers"]["difference"]["dr"]
    assert diff["hi"] < 0, diff
    assert (
        record["numbers"]["candidate"]["dr"]["value"] < record["numbers"]["current"]["dr"]["value"]
    )
    await trainer.close()


def test_gate_rules() -> None:
    numbers = {
        "candidate": {"dr": {"value": 0.50, "lo": 0.45, "hi": 0.55, "n": 500}},
        "current": {"dr": {"value": 0.48, "lo": 0.43, "hi": 0.53, "n": 500}},
        "difference": {"dr": {"value": 0.02, "lo": -0.005, "hi": 0.045, "n": 500}},
    }
    assert judge(GateSpec(), numbers, 500).publish
    assert not judge(GateSpec(min_examples=1000), numbers, 500).publish
    assert not judge(GateSpec(margin=0.0), numbers, 500).publish
    assert judge(GateSpec(rule="unpaired", margin=0.04), numbers, 500).publish
    assert not judge(GateSpec(rule="unpaired", margin=0.02), numbers, 500).publish
    assert judge(GateSpec(enabled=False), numbers, 0).publish


async def test_a_crash_neither_loses_nor_repeats_an_example(redis, name):
    spec = spec_for(name, update={"every_events": 300, "every_s": 3600})
    await ExperimentStore(redis).put(spec)
    await write_joined(redis, name, uniform_log(name, 1000, {"a": 0.3, "b": 0.7}, seed=5))
    clock = Clock()
    first = Trainer(redis=redis, clock=clock, batch=128, owner="first", experiments=[name])
    # 128-example batches: checkpoints land after 384 and 768 examples; stop at 896.
    for _ in range(7):
        await first.run_once()
    assert first.training[name].learner.n_examples == 896
    # Crash: no close(), no final checkpoint. The lock expires; another trainer takes over.
    await redis.delete(keys.trainer_lock(name))
    second = Trainer(redis=redis, clock=clock, batch=128, owner="second", experiments=[name])
    await drain(second)
    learned = second.training[name].learner.n_examples
    await second.close()
    assert learned == 1000
    state = await redis.hgetall(keys.trainer_state(name))
    assert int(state[b"examples"]) == 1000
    pending = await redis.xpending(keys.joined(name), "trainer")
    assert pending["pending"] == 0


async def test_only_the_lock_holder_trains(redis, name):
    await ExperimentStore(redis).put(spec_for(name))
    await write_joined(redis, name, uniform_log(name, 300, {"a": 0.5, "b": 0.5}))
    one = Trainer(redis=redis, owner="one", experiments=[name])
    two = Trainer(redis=redis, owner="two", experiments=[name])
    assert await one.run_once() > 0
    assert await two.run_once() == 0 and name not in two.training
    await one.close()
    assert await two.run_once() >= 0 and name in two.training
    await two.close()


async def test_thompson_learner_learns_through_the_trainer(redis, name):
    spec = spec_for(name, learner="thompson")
    await ExperimentStore(redis).put(spec)
    await write_joined(redis, name, uniform_log(name, 1200, {"a": 0.2, "b": 0.8}, seed=9))
    trainer = Trainer(redis=redis, clock=Clock(), experiments=[name], batch=200)
    await drain(trainer)
    await trainer.close()
    registry = PolicyRegistry(redis)
    latest = (await registry.versions(name))[-1]
    assert latest.learner == "thompson"
    counts = orjson.loads(await registry.model(name, latest.version))
    assert counts["alpha"]["b"] > counts["alpha"]["a"] and counts["beta"]["a"] > counts["beta"]["b"]
    pmf = build_policy(
        spec, await registry.model(name, latest.version), latest.version
    ).probabilities({}, ActionSet.from_spec(spec))
    assert pmf[1] > 0.95


async def test_an_idle_trainer_watching_announcements_reads_no_spec(redis, name):
    """It used to parse every spec on every idle pass (about every 50 ms)."""
    store = ExperimentStore(redis)
    await store.put(spec_for(name))
    trainer = Trainer(redis=redis, clock=Clock(), experiments=[name])
    watching = asyncio.create_task(trainer.watcher.watch())
    try:
        await asyncio.wait_for(trainer.watcher.watching.wait(), timeout=10)
        reads = 0
        find = trainer.watcher.store.find

        async def counted(experiment: str):  # type: ignore[no-untyped-def]
            nonlocal reads
            reads += 1
            return await find(experiment)

        trainer.watcher.store.find = counted  # type: ignore[method-assign]
        assert [await trainer.run_once() for _ in range(10)] == [0] * 10
        assert reads == 0 and name in trainer.training
        # A change still reaches it, by its announcement.
        await store.put(spec_for(name, learner="static", weights={"a": 1, "b": 1}))

        async def dropped() -> bool:
            await trainer.run_once()
            return name not in trainer.training

        await wait_for(dropped)
        assert reads == 1
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
        await trainer.close()
