"""Decision logging under load, hot swap without dropped requests, replayable sampling."""

from __future__ import annotations

import asyncio

import aiohttp

from banditgate.featurize import arm_action_lines, example_lines
from banditgate.policy import (
    ActionSet,
    build_policy,
    new_workspace,
    workspace_to_bytes,
)
from banditgate.registry import PolicyRegistry
from banditgate.spec import ExperimentSpec
from banditgate.store import ExperimentStore
from tests.router.conftest import logged_decisions
from tests.support import Backend, make_spec, run_backend, wait_for


def trained_model(spec: ExperimentSpec, best: str, rounds: int = 300) -> bytes:
    """A VW model that has learned `best` earns reward 1 and the others 0."""
    workspace = new_workspace(spec.policy, save_resume=True)
    actions = arm_action_lines(spec.arms)
    for i in range(rounds):
        index = i % len(spec.arms)
        cost = -1.0 if spec.arms[index].name == best else 0.0
        workspace.learn(example_lines({"t.len": "15"}, actions, (index, cost, 1 / len(actions))))
    return workspace_to_bytes(workspace)


async def test_every_routed_request_is_logged_once_under_concurrency(start_router, redis, name):
    async with run_backend() as a, run_backend() as b:
        url, app = await start_router(make_spec(name, [("a", a.url), ("b", b.url)]))
        limit = asyncio.Semaphore(64)
        event_ids: list[str] = []

        async def one(http: aiohttp.ClientSession, i: int) -> int:
            async with (
                limit,
                http.post(
                    f"{url}/endpoints/{name}/invocations",
                    json={"features": [f"review number {i} was {'great' if i % 2 else 'bad'}"]},
                ) as response,
            ):
                await response.read()
                event_ids.append(response.headers["X-Banditgate-Event-Id"])
                return response.status

        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(connector=connector) as http:
            statuses = await asyncio.gather(*(one(http, i) for i in range(2000)))
        assert statuses == [200] * 2000
        await wait_for(lambda: _count_at_least(redis, name, 2000), timeout=30)
    decisions = await logged_decisions(redis, name)
    assert len(decisions) == 2000
    assert sorted(d["event_id"] for d in decisions) == sorted(event_ids)
    assert len(set(event_ids)) == 2000
    assert (
        app.log is not None and app.log.stats.batches < 2000
    )  # batched, not one write per request


async def test_hot_swap_under_load_drops_nothing_and_logs_the_deciding_version(
    start_router, redis, name
):
    async with run_backend(Backend(delay_s=0.05)) as a, run_backend(Backend(delay_s=0.05)) as b:
        spec = make_spec(name, [("a", a.url), ("b", b.url)])
        url, app = await start_router(spec)
        model = trained_model(spec, best="b")
        registry = PolicyRegistry(redis)

        statuses: list[int] = []
        stop = asyncio.Event()

        async def stream(http: aiohttp.ClientSession) -> None:
            # Requests keep flowing, several in flight at once, through the swap.
            while not stop.is_set():
                async with http.post(
                    f"{url}/endpoints/{name}/invocations", json={"features": ["a fine product"]}
                ) as response:
                    await response.read()
                    statuses.append(response.status)

        async def at_least(n: int) -> bool:
            return len(statuses) >= n

        async with aiohttp.ClientSession() as http:
            streams = [asyncio.create_task(stream(http)) for _ in range(8)]
            await wait_for(lambda: at_least(60), timeout=30)
            await registry.publish(name, model, learner="vw", source="test")

            async def swapped() -> bool:
                return app.runtime is not None and app.runtime.swaps == 1

            await wait_for(swapped, timeout=30)
            target = len(statuses) + 80
            await wait_for(lambda: at_least(target), timeout=30)
            stop.set()
            await asyncio.gather(*streams)
        total = len(statuses)
        assert statuses == [200] * total
        await wait_for(lambda: _count_at_least(redis, name, total))
    decisions = await logged_decisions(redis, name)
    assert len(decisions) == total
    versions = {d["policy_version"] for d in decisions}
    assert versions == {0, 1}
    policies = {0: build_policy(spec, None, 0), 1: build_policy(spec, model, 1)}
    actions = ActionSet.from_spec(spec)
    for decision in decisions:
        expected = policies[decision["policy_version"]].probabilities(decision["context"], actions)
        assert decision["pmf"] == expected
    after = [d for d in decisions if d["policy_version"] == 1]
    assert sum(d["chosen"] == "b" for d in after) > 0.8 * len(after)
    assert app.runtime is not None and app.runtime.swaps == 1


async def test_same_event_id_and_version_gives_the_same_arm(start_router, name):
    async with run_backend() as a, run_backend() as b, run_backend() as c:
        url, _ = await start_router(make_spec(name, [("a", a.url), ("b", b.url), ("c", c.url)]))
        async with aiohttp.ClientSession() as http:

            async def variant(event_id: str) -> str:
                async with http.post(
                    f"{url}/endpoints/{name}/invocations",
                    json={"features": ["x"]},
                    headers={"X-Amzn-SageMaker-Inference-Id": event_id},
                ) as response:
                    return response.headers["X-Banditgate-Variant"]

            first = [await variant(f"replay-{i}") for i in range(60)]
            second = [await variant(f"replay-{i}") for i in range(60)]
    assert first == second
    assert set(first) == {"a", "b", "c"}


async def test_min_arm_share_floor_holds_on_a_confident_policy(start_router, redis, name):
    async with run_backend() as a, run_backend() as b:
        spec = make_spec(name, [("a", a.url), ("b", b.url)], policy={"min_arm_share": 0.1})
        await ExperimentStore(redis).put(spec)  # a policy is published for an experiment
        await PolicyRegistry(redis).publish(name, trained_model(spec, best="b"), learner="vw")
        url, _ = await start_router(spec)
        async with aiohttp.ClientSession() as http:
            for _ in range(30):
                async with http.post(
                    f"{url}/endpoints/{name}/invocations", json={"features": ["x"]}
                ) as response:
                    assert response.status == 200
        await wait_for(lambda: _count_at_least(redis, name, 30))
    for decision in await logged_decisions(redis, name):
        assert decision["policy_version"] == 1
        assert min(decision["pmf"]) >= 0.1 - 1e-9
        assert decision["pmf"][1] > decision["pmf"][0]


async def _count_at_least(redis, name, n):  # type: ignore[no-untyped-def]
    return len(await logged_decisions(redis, name)) >= n
