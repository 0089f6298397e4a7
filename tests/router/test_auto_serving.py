"""`learner: auto`: a router serves whichever learner won, swapping between them."""

from __future__ import annotations

import aiohttp

from banditgate.linear_thompson import LinearThompsonModel
from banditgate.policy import ActionSet, LinearThompsonPolicy, VWPolicy, build_policy
from banditgate.registry import PolicyRegistry
from tests.router.conftest import logged_decisions
from tests.router.test_policy_serving import trained_model
from tests.support import make_spec, run_backend, wait_for


async def test_a_router_serves_the_winning_learner_of_each_version(start_router, redis, name):
    async with run_backend() as a, run_backend() as b:
        spec = make_spec(name, [("a", a.url), ("b", b.url)], policy={"learner": "auto"})
        url, app = await start_router(spec)
        registry = PolicyRegistry(redis)
        thompson = LinearThompsonModel()
        for i in range(400):
            arm = "ab"[i % 2]
            thompson.learn({}, arm, 1.0 if arm == "b" else 0.0)
        models = {1: thompson.to_bytes(), 2: trained_model(spec, best="a")}
        expected = {1: ("linear_thompson", "b"), 2: ("vw", "a")}
        actions = ActionSet.from_spec(spec)
        async with aiohttp.ClientSession() as http:
            for version, model in models.items():
                record = await registry.publish(name, model, source="test")
                assert (record.version, record.learner) == (version, expected[version][0])

                async def swapped(version: int = version) -> bool:
                    return app.runtime is not None and app.runtime.swaps == version

                await wait_for(swapped, timeout=30)
                for _ in range(40):
                    async with http.post(
                        f"{url}/endpoints/{name}/invocations", json={"features": ["fine"]}
                    ) as response:
                        assert response.status == 200, await response.text()

        async def all_logged() -> bool:
            return len(await logged_decisions(redis, name)) >= 80

        await wait_for(all_logged)
    decisions = await logged_decisions(redis, name)
    policies = {v: build_policy(spec, m, v) for v, m in models.items()}
    assert isinstance(policies[1], LinearThompsonPolicy) and isinstance(policies[2], VWPolicy)
    for version, (_, best) in expected.items():
        served = [d for d in decisions if d["policy_version"] == version]
        assert len(served) == 40
        for decision in served:
            assert decision["pmf"] == policies[version].probabilities(decision["context"], actions)
        assert sum(d["chosen"] == best for d in served) > 0.8 * len(served)
