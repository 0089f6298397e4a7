"""The rollout controller against a real router, real loopback backends and real Redis.

Time is a fake clock the test advances; metrics windows use the streams' own
clock, so no test waits for an interval to pass.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from banditgate import keys
from banditgate.errors import Conflict
from banditgate.redis import Redis, connect
from banditgate.spec import ExperimentSpec
from banditgate.store import ExperimentStore
from experiments.controller import Controller
from experiments.rollout import RolloutState
from experiments.rollout_store import RolloutStore
from router.app import RouterApp
from tests.router.conftest import start_router  # noqa: F401  (fixture)
from tests.support import Backend, make_spec, run_backend, wait_for
from tests.traffic import decision_count, decisions, invoke_many

# Everything shares one event loop here, so latencies are noisy: tests about other guardrails
# leave latency plenty of room, and the slow arm in the latency test is slower by far.
CALM = {"min_samples": 20, "max_p99_latency_delta_ms": 5000}


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def canary_spec(name: str, base: str, new: str, **section: Any):  # type: ignore[no-untyped-def]
    canary = {
        "baseline": "base",
        "canary": "new",
        "steps": [20, 50, 100],
        "interval_s": 30,
        "guardrails": CALM,
        **section,
    }
    return make_spec(name, [("base", base), ("new", new)], mode="canary", canary=canary)


class Traffic:
    """Sends requests with deterministic event ids and waits until they are logged."""

    def __init__(self, redis: Redis, url: str, name: str) -> None:
        self.redis, self.url, self.name = redis, url, name
        self.sent = 0

    async def send(self, n: int, **kwargs: Any) -> list[Any]:
        ids = [f"{self.name}-{self.sent + i:06d}" for i in range(n)]
        self.sent += n
        replies = await invoke_many(self.url, self.name, ids, **kwargs)

        async def logged() -> bool:
            return await decision_count(self.redis, self.name) >= self.sent

        await wait_for(logged)
        return replies


async def routed_weights(app: RouterApp, name: str, weights: dict[str, float]) -> None:
    async def applied() -> bool:
        state = app.runtime.experiments.get(name)
        return state is not None and state.static is not None and state.static.weights == weights

    await wait_for(applied)


async def test_a_healthy_canary_walks_every_step_and_is_promoted(start_router, redis, name):  # noqa: F811
    async with run_backend(Backend(label=1)) as base, run_backend(Backend(label=2)) as new:
        url, app = await start_router(canary_spec(name, base.url, new.url))
        clock = FakeClock()
        controller = Controller(redis=redis, clock=clock, experiments=[name])
        traffic = Traffic(redis, url, name)

        assert await controller.run_once() == {name: "Progressing"}
        await routed_weights(app, name, {"base": 80.0, "new": 20.0})
        first = await traffic.send(200)
        assert await controller.run_once() == {name: "Progressing"}  # the interval is not over
        clock.advance(30)
        await controller.run_once()
        await routed_weights(app, name, {"base": 50.0, "new": 50.0})
        await traffic.send(200)
        clock.advance(30)
        await controller.run_once()
        await routed_weights(app, name, {"base": 0.0, "new": 100.0})
        last = await traffic.send(60)
        clock.advance(30)
        assert await controller.run_once() == {name: "Promoted"}
        await controller.close()

    assert 20 <= sum(r.variant == "new" for r in first) <= 70
    assert {r.variant for r in last} == {"new"}
    view = await RolloutStore(redis).view(name)
    assert view["phase"] == "Promoted" and view["weights"] == {"base": 0.0, "new": 100.0}
    assert [h["phase"] for h in view["history"]] == ["Progressing"] * 3 + ["Promoted"]
    assert [h["weights"]["new"] for h in view["history"]] == [20.0, 50.0, 100.0, 100.0]
    assert all(h["ts_ms"] > 0 and h["reason"] for h in view["history"])
    # Every decision carries the weights in force as its pmf.
    pmfs = {tuple(d["pmf"]) for d in await decisions(redis, name)}
    assert pmfs == {(0.8, 0.2), (0.5, 0.5), (0.0, 1.0)}


async def test_a_canary_answering_5xx_is_rolled_back_to_zero(start_router, redis, name):  # noqa: F811
    async with run_backend() as base, run_backend(Backend(status=500)) as new:
        url, app = await start_router(canary_spec(name, base.url, new.url))
        clock = FakeClock()
        controller = Controller(redis=redis, clock=clock, experiments=[name])
        traffic = Traffic(redis, url, name)
        await controller.run_once()
        await routed_weights(app, name, {"base": 80.0, "new": 20.0})
        await traffic.send(200)
        clock.advance(30)
        assert await controller.run_once() == {name: "RolledBack"}
        await routed_weights(app, name, {"base": 100.0, "new": 0.0})
        after = await traffic.send(50)
        clock.advance(300)
        assert await controller.run_once() == {name: "RolledBack"}  # stays rolled back
        await controller.close()

    assert {r.variant for r in after} == {"base"}
    view = await RolloutStore(redis).view(name)
    assert view["phase"] == "RolledBack"
    reason = view["history"][-1]["reason"]
    # The routers eject the failing arm after a few 5xx, so it sees little traffic; its
    # errors are conclusive anyway (a lower confidence bound above the allowed rate).
    assert reason.startswith("step 1/3 (20% to new): error rate new ")
    assert "100.0%" in reason or "with 99% confidence" in reason
    assert reason.endswith("rolled back to 0%")


async def test_a_slow_canary_is_rolled_back_on_p99_latency(start_router, redis, name):  # noqa: F811
    async with run_backend() as base, run_backend(Backend(delay_s=0.6)) as new:
        spec = canary_spec(
            name,
            base.url,
            new.url,
            guardrails={
                "min_samples": 20,
                "max_p99_latency_ratio": 2.0,
                "max_p99_latency_delta_ms": 200,
            },
        )
        url, app = await start_router(spec)
        clock = FakeClock()
        controller = Controller(redis=redis, clock=clock, experiments=[name])
        await controller.run_once()
        await routed_weights(app, name, {"base": 80.0, "new": 20.0})
        await Traffic(redis, url, name).send(200, concurrency=64)
        clock.advance(30)
        assert await controller.run_once() == {name: "RolledBack"}
        await controller.close()
    view = await RolloutStore(redis).view(name)
    assert "p99 new" in view["message"] and "allowed x2 or +200 ms" in view["message"]


async def test_too_little_traffic_pauses_then_the_canary_goes_on(start_router, redis, name):  # noqa: F811
    async with run_backend() as base, run_backend() as new:
        url, app = await start_router(canary_spec(name, base.url, new.url))
        clock = FakeClock()
        controller = Controller(redis=redis, clock=clock, experiments=[name])
        traffic = Traffic(redis, url, name)
        await controller.run_once()
        await routed_weights(app, name, {"base": 80.0, "new": 20.0})
        await traffic.send(10)
        clock.advance(30)
        assert await controller.run_once() == {name: "Paused"}
        paused = await RolloutStore(redis).view(name)
        assert paused["paused_by"] == "traffic" and "too little traffic" in paused["message"]
        assert paused["weights"] == {"base": 80.0, "new": 20.0}
        await traffic.send(200)
        clock.advance(30)
        assert await controller.run_once() == {name: "Progressing"}
        await controller.close()
    view = await RolloutStore(redis).view(name)
    assert view["step"] == 2 and view["weights"] == {"base": 50.0, "new": 50.0}


async def test_a_canary_with_lower_rewards_is_rolled_back(start_router, redis, name):  # noqa: F811
    async with run_backend() as base, run_backend() as new:
        spec = canary_spec(
            name,
            base.url,
            new.url,
            guardrails={**CALM, "min_reward_delta": -0.1, "min_reward_samples": 20},
        )
        url, app = await start_router(spec)
        clock = FakeClock()
        controller = Controller(redis=redis, clock=clock, experiments=[name])
        await controller.run_once()
        await routed_weights(app, name, {"base": 80.0, "new": 20.0})
        await Traffic(redis, url, name).send(200)
        clock.advance(30)
        assert await controller.run_once() == {name: "Paused"}  # no rewards have joined yet
        # The joiner's output: each decision with its reward (1 on the baseline, 0.5 on the canary).
        for d in await decisions(redis, name):
            reward = 1.0 if d["chosen"] == "base" else 0.5
            fields = {"d": orjson.dumps(d), "r": repr(reward), "rw": "1", "n": 1, "jt": d["ts_ms"]}
            await redis.xadd(keys.joined(name), fields)  # type: ignore[arg-type]
        clock.advance(30)
        assert await controller.run_once() == {name: "RolledBack"}
        await controller.close()
    view = await RolloutStore(redis).view(name)
    assert "mean reward new 0.5000" in view["message"] and "vs base 1.0000" in view["message"]


async def test_rollout_state_survives_a_controller_restart(start_router, redis, name):  # noqa: F811
    async with run_backend() as base, run_backend() as new:
        url, app = await start_router(canary_spec(name, base.url, new.url))
        clock = FakeClock()
        traffic = Traffic(redis, url, name)
        first = Controller(redis=redis, clock=clock, experiments=[name], owner="first")
        await first.run_once()
        await routed_weights(app, name, {"base": 80.0, "new": 20.0})
        await traffic.send(200)
        clock.advance(30)
        await first.run_once()
        await first.close()  # the process stops

        second = Controller(redis=redis, clock=clock, experiments=[name], owner="second")
        assert await second.run_once() == {name: "Progressing"}
        view = await RolloutStore(redis).view(name)
        assert view["step"] == 2 and view["weights"] == {"base": 50.0, "new": 50.0}
        await routed_weights(app, name, {"base": 50.0, "new": 50.0})
        await traffic.send(200)
        clock.advance(30)
        await second.run_once()
        await second.close()
    view = await RolloutStore(redis).view(name)
    assert view["step"] == 3 and len(view["history"]) == 3


async def test_only_the_lock_holder_acts_and_another_takes_over_when_it_expires(redis, name):
    spec = canary_spec(name, "http://127.0.0.1:9", "http://127.0.0.1:9")
    await ExperimentStore(redis).put(spec)
    clock = FakeClock()
    one = Controller(redis=redis, clock=clock, experiments=[name], owner="one", lock_ttl_s=30)
    two = Controller(redis=redis, clock=clock, experiments=[name], owner="two", lock_ttl_s=30)
    assert await one.run_once() == {name: "Progressing"}
    assert await two.run_once() == {name: "locked"}
    assert await redis.get(keys.rollout_lock(name)) == b"one"
    clock.advance(30)
    assert await two.run_once() == {name: "locked"}  # the due evaluation is not two's to make
    state = await RolloutStore(redis).load(name)
    assert state is not None and len(state.history) == 1

    await redis.pexpire(keys.rollout_lock(name), 1)  # "one" died without handing back its lock

    async def taken_over() -> bool:
        return (await two.run_once()) != {name: "locked"}

    await wait_for(taken_over)
    assert await redis.get(keys.rollout_lock(name)) == b"two"
    assert await one.run_once() == {name: "locked"}
    state = await RolloutStore(redis).load(name)
    assert state is not None and state.phase == "Paused"  # no traffic at all: paused, not failed
    await two.close()
    assert await redis.get(keys.rollout_lock(name)) is None


async def test_bluegreen_switch_bake_and_termination_wait(start_router, redis, name):  # noqa: F811
    async with run_backend(Backend(label=1)) as blue, run_backend(Backend(label=2)) as green:
        spec = make_spec(
            name,
            [("blue", blue.url), ("green", green.url)],
            mode="bluegreen",
            bluegreen={
                "active": "blue",
                "preview": "green",
                "bake_s": 100,
                "termination_wait_s": 600,
                "guardrails": CALM,
            },
        )
        url, app = await start_router(spec)
        clock = FakeClock()
        controller = Controller(redis=redis, clock=clock, experiments=[name])
        rollouts = RolloutStore(redis, clock=clock)
        traffic = Traffic(redis, url, name)
        assert await controller.run_once() == {name: "Pending"}
        before = await traffic.send(100)
        view = await rollouts.act(name, "switch", reason="release 7")
        assert view["phase"] == "Progressing" and view["weights"] == {"blue": 0.0, "green": 100.0}
        await routed_weights(app, name, {"blue": 0.0, "green": 100.0})
        after = await traffic.send(100)
        clock.advance(20)
        assert await controller.run_once() == {name: "Progressing"}  # baking
        clock.advance(80)
        assert await controller.run_once() == {name: "Promoted"}

        # The old arm is kept warm: a rollback is one weights change away.
        back = await rollouts.act(name, "rollback")
        assert back["phase"] == "RolledBack"
        await routed_weights(app, name, {"blue": 100.0, "green": 0.0})
        rolled = await traffic.send(20)

        await rollouts.act(name, "switch")
        await rollouts.act(name, "promote")
        clock.advance(599)
        await controller.run_once()
        assert (await rollouts.view(name))["released"] is False
        clock.advance(1)
        await controller.run_once()
        with pytest.raises(Conflict, match="released"):
            await rollouts.act(name, "rollback")
        await controller.close()

    assert {r.variant for r in before} == {"blue"}
    assert {r.variant for r in after} == {"green"}
    assert {r.variant for r in rolled} == {"blue"}
    view = await RolloutStore(redis).view(name)
    assert view["released"] is True and view["weights"] == {"blue": 0.0, "green": 100.0}
    assert view["history"][1]["reason"] == (
        "switched by hand: release 7: all traffic to green; baking for 100s"
    )
    assert "blue is released" in view["history"][-1]["reason"]


async def test_bluegreen_bake_breach_switches_back_automatically(start_router, redis, name):  # noqa: F811
    async with run_backend() as blue, run_backend(Backend(status=503)) as green:
        spec = make_spec(
            name,
            [("blue", blue.url), ("green", green.url)],
            mode="bluegreen",
            bluegreen={
                "active": "blue",
                "preview": "green",
                "bake_s": 100,
                "guardrails": CALM,
            },
        )
        url, app = await start_router(spec)
        clock = FakeClock()
        controller = Controller(redis=redis, clock=clock, experiments=[name])
        traffic = Traffic(redis, url, name)
        await controller.run_once()
        await traffic.send(50)
        await RolloutStore(redis, clock=clock).act(name, "switch")
        await routed_weights(app, name, {"blue": 0.0, "green": 100.0})
        await traffic.send(50)
        clock.advance(20)
        assert await controller.run_once() == {name: "RolledBack"}
        await routed_weights(app, name, {"blue": 100.0, "green": 0.0})
        after = await traffic.send(20)
        await controller.close()
    assert {r.variant for r in after} == {"blue"}
    view = await RolloutStore(redis).view(name)
    assert view["message"].startswith("bake: error rate green 100.0% (50/50)")


async def test_weights_changed_behind_the_rollouts_back_are_restored(redis, name):
    store = ExperimentStore(redis)
    await store.put(canary_spec(name, "http://127.0.0.1:9", "http://127.0.0.1:9"))
    controller = Controller(redis=redis, clock=FakeClock(), experiments=[name])
    await controller.run_once()
    await store.set_override(
        name, {"base": 0.0, "new": 100.0}, reason="someone", mode="canary", target=["base", "new"]
    )
    await controller.run_once()
    override = await store.get_override(name)
    assert override is not None and override["weights"] == {"base": 80.0, "new": 20.0}
    assert override["revision"] == 3 and override["source"] == "rollout"
    await controller.close()


async def test_a_write_between_read_and_commit_is_retried_not_lost(redis, redis_url, name):
    await ExperimentStore(redis).put(canary_spec(name, "http://127.0.0.1:9", "http://127.0.0.1:9"))
    clock = FakeClock()
    await Controller(redis=redis, clock=clock, experiments=[name]).run_once()
    other = connect(redis_url)
    attempts = 0

    async def slow_tick(state: RolloutState | None, spec: ExperimentSpec) -> RolloutState | None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:  # a manual pause lands while this change is being computed
            await RolloutStore(other, clock=clock).act(name, "pause", reason="racing")
        assert state is not None
        return _quiet_note(state)

    try:
        state, _ = await RolloutStore(redis, clock=clock).update(name, slow_tick)
    finally:
        await other.aclose()
    assert attempts == 2
    assert state is not None and state.phase == "Paused" and state.message == "noted"
    stored = await RolloutStore(redis).load(name)
    assert stored == state


def _quiet_note(state: RolloutState) -> RolloutState:
    note = RolloutState.from_dict(state.to_dict())
    note.message = "noted"
    return note


async def test_run_ticks_until_stopped_then_hands_back_its_locks(redis, name):
    await ExperimentStore(redis).put(canary_spec(name, "http://127.0.0.1:9", "http://127.0.0.1:9"))
    controller = Controller(redis=redis, tick_s=0.01, experiments=[name], owner="runner")
    stop = asyncio.Event()
    task = asyncio.create_task(controller.run(stop))

    async def started() -> bool:
        return await RolloutStore(redis).load(name) is not None

    await wait_for(started)
    assert await redis.get(keys.rollout_lock(name)) == b"runner"
    stop.set()
    await asyncio.wait_for(task, timeout=10)
    assert await redis.get(keys.rollout_lock(name)) is None
