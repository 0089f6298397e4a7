"""The spec store and the policy registry keep their invariants whoever calls them.

The control plane's API, `serve -f` and the trainer all write through these classes;
the tests write concurrently from separate connections (and event loops in threads,
as separate processes would) and check the numbers that come out.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from banditgate import keys
from banditgate.errors import InvalidPolicy, UnknownExperiment, UnknownPolicyVersion
from banditgate.locks import control_lock
from banditgate.policy import BetaCounts, new_workspace, workspace_to_bytes
from banditgate.redis import Redis, connect
from banditgate.registry import PolicyRegistry
from banditgate.spec import ExperimentSpec, parse_spec
from banditgate.store import ExperimentStore, apply_specs


def spec(name: str, *, weight: int = 1, learner: str = "vw", arms: int = 2) -> ExperimentSpec:
    return parse_spec(
        {
            "name": name,
            "mode": "ab",
            "arms": [
                {"name": f"arm{i}", "url": f"http://127.0.0.1:9/{i}", "weight": weight + i}
                for i in range(arms)
            ],
            "policy": {"learner": learner},
        }
    )


def vw_model(s: ExperimentSpec) -> bytes:
    return workspace_to_bytes(new_workspace(s.policy, save_resume=True))


async def history_versions(redis: Redis, name: str) -> list[int]:
    raw = await redis.lrange(keys.spec_history(name), 0, -1)
    return [orjson.loads(item)["version"] for item in raw]


@contextlib.asynccontextmanager
async def clients(redis_url: str, n: int) -> AsyncIterator[list[Redis]]:
    """Separate connections, so concurrent writers really interleave at the server."""
    opened = [connect(redis_url) for _ in range(n)]
    try:
        yield opened
    finally:
        for client in opened:
            await client.aclose()


async def test_concurrent_writers_get_consecutive_spec_versions(redis, redis_url, name) -> None:
    async with clients(redis_url, 8) as conns:
        entries = await asyncio.gather(
            *(
                ExperimentStore(conn).put(spec(name, weight=i + 1), reason=f"writer {i}")
                for i, conn in enumerate(conns)
            )
        )
    assert sorted(entry["version"] for entry in entries) == list(range(1, 9))
    assert await history_versions(redis, name) == list(range(1, 9))
    store = ExperimentStore(redis)
    assert await store.version(name) == 8
    # The stored spec is the one the last version recorded.
    history = await store.history(name)
    assert orjson.loads((await store.get(name)).to_json()) == history[-1]["spec"]
    assert sorted(entry["reason"] for entry in history) == [f"writer {i}" for i in range(8)]


async def test_versions_stay_consecutive_even_past_the_lock(
    redis, redis_url, name, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The WATCH/MULTI write is the second line: a writer that skips the lock gets no duplicate."""

    @contextlib.asynccontextmanager
    async def no_lock(self: Any, experiment: str) -> AsyncIterator[None]:
        yield

    monkeypatch.setattr(ExperimentStore, "locked", no_lock)
    async with clients(redis_url, 6) as conns:
        entries = await asyncio.gather(
            *(
                ExperimentStore(conn).put(spec(name, weight=10 * i + n + 1))
                for n in range(3)
                for i, conn in enumerate(conns)
            )
        )
    assert sorted(entry["version"] for entry in entries) == list(range(1, 19))
    assert await history_versions(redis, name) == list(range(1, 19))


def test_serve_f_from_several_processes_at_once(redis_url, name) -> None:
    """`serve -f` in several processes: each applies through the store, in its own loop."""
    errors: list[BaseException] = []

    def one_process(weight: int) -> None:
        async def run() -> None:
            redis = connect(redis_url)
            try:
                for n in range(3):
                    await apply_specs(
                        redis, [spec(name, weight=weight * 10 + n)], reason="serve -f"
                    )
            finally:
                await redis.aclose()

        try:
            asyncio.run(run())
        except BaseException as exc:  # reported below, with the thread's traceback
            errors.append(exc)

    threads = [threading.Thread(target=one_process, args=(w,)) for w in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []

    async def read() -> list[int]:
        redis = connect(redis_url)
        try:
            return await history_versions(redis, name)
        finally:
            await redis.aclose()

    assert asyncio.run(read()) == list(range(1, 13))


async def test_an_unchanged_spec_is_not_a_new_version(redis, name) -> None:
    store = ExperimentStore(redis)
    first = await store.put(spec(name))
    again = await store.put(spec(name))
    assert (first["version"], first["created"]) == (1, True)
    assert (again["version"], again.get("unchanged")) == (1, True)
    assert await history_versions(redis, name) == [1]


async def test_a_write_waits_for_the_control_lock_held_elsewhere(redis, redis_url, name) -> None:
    """The API's read-modify-write holds the lock; a `serve -f` write lands after it, not inside."""
    store = ExperimentStore(redis)
    async with clients(redis_url, 1) as (other,):
        async with control_lock(redis, name):
            late = asyncio.create_task(
                ExperimentStore(other).put(spec(name, weight=5), reason="late")
            )
            await asyncio.sleep(0.2)  # room for the other writer to (wrongly) go first
            assert not late.done()
            await store.put(spec(name, weight=1), reason="holder")  # re-entrant: no deadlock
        await late
    assert [entry["reason"] for entry in await store.history(name)] == ["holder", "late"]


async def test_weights_override_revisions_count_up_under_concurrency(
    redis, redis_url, name
) -> None:
    await ExperimentStore(redis).put(spec(name))
    async with clients(redis_url, 6) as conns:
        records = await asyncio.gather(
            *(
                ExperimentStore(conn).set_override(name, {"arm0": i, "arm1": 1}, reason=f"r{i}")
                for i, conn in enumerate(conns)
            )
        )
    assert sorted(r["revision"] for r in records if r is not None) == list(range(1, 7))
    stored = await ExperimentStore(redis).get_override(name)
    assert stored is not None and stored["revision"] == 6


async def test_delete_keeps_nothing_but_releases_the_lock(redis, name) -> None:
    store = ExperimentStore(redis)
    await store.put(spec(name))
    await PolicyRegistry(redis).publish(name, vw_model(spec(name)))
    await store.delete(name)
    assert [key async for key in redis.scan_iter(match=keys.experiment_keys_pattern(name))] == []
    with pytest.raises(UnknownExperiment):
        await store.delete(name)
    await store.put(spec(name))  # the lock was released, and the history starts again
    assert await history_versions(redis, name) == [1]


# -- the policy registry -------------------------------------------------------------------


async def test_publish_validates_against_the_stored_spec_and_writes_nothing_when_refused(
    redis, name
) -> None:
    registry = PolicyRegistry(redis)
    with pytest.raises(UnknownExperiment):
        await registry.publish(name, vw_model(spec(name)))
    await ExperimentStore(redis).put(spec(name))
    with pytest.raises(InvalidPolicy, match="not a loadable VW model"):
        await registry.publish(name, b"\x00not a model")
    with pytest.raises(InvalidPolicy, match="uses the vw learner, not thompson"):
        await registry.publish(name, BetaCounts().to_bytes(), learner="thompson")
    assert [key async for key in redis.scan_iter(match=f"bg:{{{name}}}:policy*")] == []

    record = await registry.publish(name, vw_model(spec(name)), learner="vw", note="first")
    assert (record.version, record.learner, record.arms) == (1, "vw", ["arm0", "arm1"])
    assert await registry.current_version(name) == 1


async def test_concurrent_publishers_get_distinct_versions(redis, redis_url, name) -> None:
    s = spec(name)
    await ExperimentStore(redis).put(s)
    model = vw_model(s)
    async with clients(redis_url, 6) as conns:
        records = await asyncio.gather(
            *(
                PolicyRegistry(conn).publish(name, model, source=f"p{i}")
                for i, conn in enumerate(conns)
            )
        )
    assert sorted(r.version for r in records) == list(range(1, 7))
    registry = PolicyRegistry(redis)
    assert [v.version for v in await registry.versions(name)] == list(range(1, 7))
    history = await registry.history(name)
    assert sorted(h["version"] for h in history) == list(range(1, 7))
    assert await registry.current_version(name) == history[0]["version"]  # the last activation
    for version in range(1, 7):
        assert await registry.model(name, version) == model


async def test_activate_refuses_a_model_that_no_longer_fits_the_spec(redis, name) -> None:
    store, registry = ExperimentStore(redis), PolicyRegistry(redis)
    await store.put(spec(name))
    await registry.publish(name, vw_model(spec(name)))
    await store.put(spec(name, learner="thompson"))
    await registry.publish(name, BetaCounts().to_bytes())
    history = await registry.history(name)
    with pytest.raises(InvalidPolicy, match="not a Thompson sampling model"):
        await registry.activate(name, 1, "rollback")
    with pytest.raises(UnknownPolicyVersion):
        await registry.activate(name, 9, "rollback")
    assert await registry.current_version(name) == 2
    assert await registry.history(name) == history
