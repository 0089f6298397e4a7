"""Bounded state: the registry keeps the last N policy versions (never the one served)."""

from __future__ import annotations

import orjson
import pytest

from banditgate import keys
from banditgate.errors import UnknownPolicyVersion
from banditgate.policy import ActionSet, StaticPolicy, remember
from banditgate.redis import Redis
from banditgate.registry import PolicyRegistry
from banditgate.store import ExperimentStore
from tests.support import make_spec


async def test_old_versions_are_pruned_but_the_served_one_stays(redis: Redis, name: str) -> None:
    spec = make_spec(
        name,
        [("a", "http://127.0.0.1:9"), ("b", "http://127.0.0.1:9")],
        policy={"learner": "static", "weights": {"a": 1, "b": 1}},
    )
    await ExperimentStore(redis).put(spec)
    registry = PolicyRegistry(redis, keep_versions=3)
    model = orjson.dumps({"a": 1.0, "b": 1.0})
    await registry.publish(name, model, learner="static")  # version 1, served
    for _ in range(5):  # versions 2..6, not served
        await registry.publish(name, model, learner="static", activate=False)
    kept = sorted(record.version for record in await registry.versions(name))
    assert kept == [1, 4, 5, 6]  # the last three, and version 1 which is still served
    assert await redis.exists(keys.policy_model(name, 2)) == 0
    with pytest.raises(UnknownPolicyVersion):
        await registry.activate(name, 2, "rollback too far")
    await registry.activate(name, 6, "newest")
    await registry.publish(name, model, learner="static", activate=False)  # version 7
    kept = sorted(record.version for record in await registry.versions(name))
    assert kept == [5, 6, 7]
    assert await registry.current_version(name) == 6
    await ExperimentStore(redis).delete(name)


def test_pmf_caches_keyed_by_client_actions_stay_bounded() -> None:
    policy = StaticPolicy({"a": 1.0})
    for i in range(20_000):
        policy.probabilities({}, ActionSet((f"arm-{i}",), ()))
    assert len(policy._cache) <= 8192
    cache: dict[object, list[float]] = {}
    for i in range(10_000):
        remember(cache, i, [1.0])
    assert len(cache) <= 8192
