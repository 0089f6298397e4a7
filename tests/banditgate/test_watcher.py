"""The experiment watcher: the served specs, fresh by announcements, resynced on resubscribe."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from banditgate import keys
from banditgate.redis import Redis, connect
from banditgate.spec import ExperimentSpec
from banditgate.store import ExperimentStore
from banditgate.watcher import ExperimentWatcher
from tests.support import make_spec, wait_for


def spec(name: str, window_s: float = 60.0) -> ExperimentSpec:
    return make_spec(
        name,
        [("a", "http://127.0.0.1:9"), ("b", "http://127.0.0.1:9")],
        reward={"window_s": window_s},
    )


class Changes:
    def __init__(self) -> None:
        self.seen: list[tuple[str | None, str]] = []

    async def __call__(self, name: str | None, kind: str) -> None:
        self.seen.append((name, kind))


@pytest.fixture
async def watching(
    redis_url: str,
) -> AsyncIterator[Callable[..., Any]]:
    """`await watching(only=...)` -> (watcher, changes, client name), watching until the end."""
    tasks: list[asyncio.Task[None]] = []
    clients: list[Redis] = []

    async def start(**options: Any) -> tuple[ExperimentWatcher, Changes, str]:
        client_name = f"watcher-{uuid.uuid4().hex[:8]}"
        client = connect(redis_url, client_name=client_name)
        clients.append(client)
        changes = Changes()
        watcher = ExperimentWatcher(client, on_change=changes, **options)
        tasks.append(asyncio.create_task(watcher.watch()))
        await asyncio.wait_for(watcher.watching.wait(), timeout=10)
        return watcher, changes, client_name

    try:
        yield start
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for client in clients:
            await client.aclose()


async def test_not_watching_every_read_is_fresh_and_filtered(redis, name):
    store = ExperimentStore(redis)
    other = f"{name}-other"
    watcher = ExperimentWatcher(redis, only=[name, f"{name}-later"])
    await store.put(spec(name))
    await store.put(spec(other))
    assert list(await watcher.current()) == [name]
    assert watcher.serves(name) and not watcher.serves(other)
    await store.put(spec(name, window_s=5))
    assert (await watcher.current())[name].reward.window_s == 5
    assert await watcher.get(other) is None
    await store.delete(name)
    assert await watcher.current() == {}
    await store.delete(other)


async def test_announcements_keep_the_cache_current(redis, name, watching):
    store = ExperimentStore(redis)
    watcher, changes, _ = await watching(only=[name])
    assert changes.seen == [(None, "resync")]
    await store.put(spec(name, window_s=7))

    async def window_is(value: float) -> bool:
        current = watcher.specs.get(name)
        return current is not None and current.reward.window_s == value

    await wait_for(lambda: window_is(7))
    await store.put(spec(name, window_s=8))
    await wait_for(lambda: window_is(8))
    await store.set_override(name, {"a": 1.0, "b": 0.0}, reason="test")
    await store.delete(name)

    async def deleted() -> bool:
        return name not in watcher.specs

    await wait_for(deleted)
    assert changes.seen == [
        (None, "resync"),
        (name, "spec"),
        (name, "spec"),
        (name, "weights"),
        (name, "deleted"),
    ]


async def test_while_watching_reads_come_from_the_cache(redis, name, watching):
    """An idle component does not parse specs again and again (the trainer did, every 50 ms)."""
    await ExperimentStore(redis).put(spec(name, window_s=3))
    watcher, _, _ = await watching(only=[name])
    reads = 0
    find = watcher.store.find

    async def counted(experiment: str) -> ExperimentSpec | None:
        nonlocal reads
        reads += 1
        return await find(experiment)

    watcher.store.find = counted  # type: ignore[method-assign]
    for _ in range(20):
        assert (await watcher.current())[name].reward.window_s == 3
        assert (await watcher.get(name)) is watcher.specs[name]
    assert reads == 0


async def test_a_name_not_cached_is_read_through(redis, name, watching):
    watcher, changes, _ = await watching()
    # Stored without an announcement, as if it had not arrived yet.
    await redis.set(keys.spec(name), spec(name, window_s=4).to_json())
    await redis.sadd(keys.EXPERIMENTS, name)
    found = await watcher.get(name)
    assert found is not None and found.reward.window_s == 4
    assert name not in [n for n, _ in changes.seen]
    await ExperimentStore(redis).delete(name)


async def test_a_lost_subscription_resyncs_what_it_missed(redis, name, watching):
    store = ExperimentStore(redis)
    await store.put(spec(name, window_s=1))
    watcher, changes, client_name = await watching(only=[name])
    killed = 0
    for client in await redis.client_list(_type="pubsub"):
        if client["name"] == client_name:
            killed += await redis.client_kill_filter(_id=client["id"])
    assert killed == 1

    async def lost() -> bool:
        return not watcher.watching.is_set()

    await wait_for(lost)
    # Changed while no subscription was there to hear it: only the resync can bring it.
    await store.put(spec(name, window_s=2))

    async def resynced() -> bool:
        return watcher.watching.is_set() and watcher.specs[name].reward.window_s == 2

    await wait_for(resynced)
    assert changes.seen.count((None, "resync")) >= 2
    await store.delete(name)


async def test_an_unreadable_spec_keeps_the_last_readable_version(redis, name, watching, caplog):
    store = ExperimentStore(redis)
    await store.put(spec(name, window_s=9))
    fresh = f"{name}-fresh"
    watcher, changes, _ = await watching(only=[name, fresh])
    await redis.set(keys.spec(name), b'{"name": "written by a newer version", "arms": 7}')
    await redis.set(keys.spec(fresh), b'{"name": "x", "arms": 7}')
    await redis.sadd(keys.EXPERIMENTS, fresh)
    for _ in range(3):
        await store.redis.publish(
            keys.ANNOUNCE_CHANNEL, b'{"experiment": "%s", "kind": "spec"}' % name.encode()
        )

    async def told() -> bool:
        return changes.seen.count((name, "spec")) == 3

    await wait_for(told)
    assert watcher.specs[name].reward.window_s == 9
    assert await watcher.get(fresh) is None
    assert (await watcher.sync()).keys() == {name}
    unreadable = [r for r in caplog.records if "unreadable" in r.getMessage()]
    assert [r.getMessage().rsplit("; ", 1)[1] for r in unreadable] == [
        "the last readable version stays",
        "not served",
    ]
    await redis.srem(keys.EXPERIMENTS, name, fresh)
    await redis.delete(keys.spec(name), keys.spec(fresh))


async def test_a_failing_listener_does_not_end_the_subscription(redis, name, watching):
    store = ExperimentStore(redis)
    watcher, changes, _ = await watching(only=[name])
    failures = 0

    async def flaky(experiment: str | None, kind: str) -> None:
        nonlocal failures
        await changes(experiment, kind)
        if kind == "spec" and failures == 0:
            failures += 1
            raise RuntimeError("listener failed")

    watcher.on_change = flaky
    await store.put(spec(name, window_s=1))
    await store.put(spec(name, window_s=2))

    async def both() -> bool:
        return changes.seen.count((name, "spec")) == 2

    await wait_for(both)
    assert failures == 1 and watcher.watching.is_set()
    await store.delete(name)
