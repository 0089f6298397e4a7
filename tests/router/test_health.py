from __future__ import annotations

import aiohttp

from banditgate import keys
from banditgate.announce import announce
from banditgate.registry import PolicyRegistry
from banditgate.store import ExperimentStore
from tests.router.test_metrics import scrape
from tests.support import make_spec, run_backend, wait_for


async def test_ready_lists_loaded_policies_and_is_degraded_without_redis(start_router, redis, name):
    async with run_backend() as backend:
        url, app = await start_router(
            make_spec(name, [("a", backend.url)], policy={"learner": "thompson"})
        )
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/health/live") as response:
                assert response.status == 200
            async with http.get(f"{url}/health/ready") as response:
                assert response.status == 200
                body = await response.json()
            assert body["experiments"][name] == {"policy_version": 0, "mode": "bandit"}

            await PolicyRegistry(redis).publish(
                name, b'{"alpha": {"a": 5}, "beta": {"a": 2}}', learner="thompson"
            )
            assert app.runtime is not None
            await wait_for(lambda: _loaded(app, name, 1))

            healthy = app.redis
            from banditgate.redis import connect

            app.redis = connect("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
            try:
                # Routing goes on (decisions wait in the log): degraded, not unready.
                async with http.get(f"{url}/health/ready") as response:
                    assert response.status == 200
                    body = await response.json()
                    assert body["status"] == "degraded" and "unreachable" in body["redis"]
                assert await scrape(url, "banditgate_router_redis_up") == 0.0
            finally:
                await app.redis.aclose()
                app.redis = healthy
            async with http.get(f"{url}/health/ready") as response:
                assert response.status == 200
                assert (await response.json())["status"] == "ready"
            assert await scrape(url, "banditgate_router_redis_up") == 1.0


async def _loaded(app, name, version) -> bool:  # type: ignore[no-untyped-def]
    return app.runtime.experiments[name].loaded_version == version


async def test_a_bad_model_in_the_registry_leaves_routers_on_the_version_they_have(
    start_router, redis, name
):
    from tests.router.test_policy_serving import trained_model

    async with run_backend() as a, run_backend() as b:
        spec = make_spec(name, [("a", a.url), ("b", b.url)])
        await ExperimentStore(redis).put(spec)  # a policy is published for an experiment
        registry = PolicyRegistry(redis)
        await registry.publish(name, trained_model(spec, best="b"), learner="vw")
        url, app = await start_router(spec)
        assert app.runtime is not None
        await wait_for(lambda: _loaded(app, name, 1))
        # The registry refuses such a model; a corrupt store could still serve one.
        await registry.publish(name, trained_model(spec, best="a"), learner="vw", activate=False)
        await redis.set(keys.policy_model(name, 2), b"\x00not a model")
        await redis.set(keys.policy_current(name), 2)
        await announce(redis, name, "policy", version=2)
        async with aiohttp.ClientSession() as http:
            for _ in range(20):
                async with http.post(
                    f"{url}/v1/experiments/{name}/rank", json={"context": {}}
                ) as response:
                    assert response.status == 200
                    assert (await response.json())["policy_version"] == 1
        assert app.runtime.experiments[name].loaded_version == 1


async def test_an_unreadable_stored_spec_does_not_stop_the_others(start_router, redis, name):
    broken = f"{name}-broken"
    await redis.sadd(keys.EXPERIMENTS, broken)
    await redis.set(keys.spec(broken), b'{"name": "written by a newer version", "arms": 7}')
    async with run_backend() as backend:
        url, app = await start_router(
            make_spec(name, [("a", backend.url)]), experiments=[name, broken]
        )
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{url}/endpoints/{name}/invocations", json={"features": ["ok"]}
            ) as response:
                assert response.status == 200
            async with http.get(f"{url}/health/ready") as response:
                assert response.status == 503
                assert broken in (await response.json())["error"]["message"]
    assert app.runtime is not None and set(app.runtime.experiments) == {name}
    assert app.runtime.ready  # the resync finished despite the broken spec
    await redis.srem(keys.EXPERIMENTS, broken)
