"""The batched stream writer behind the decision log and the shadow results."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from banditgate import keys
from banditgate.events import Decision, ShadowResult, decode_shadow_batch
from banditgate.redis import Redis, connect
from router.decision_log import DecisionLog
from router.shadow import ShadowResults
from tests.router.conftest import logged_decisions
from tests.support import wait_for


@pytest.fixture
async def dead_redis() -> AsyncIterator[Redis]:
    client = connect("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)  # nothing listens
    try:
        yield client
    finally:
        await client.aclose()


def a_decision(experiment: str, i: int) -> Decision:
    return {
        "event_id": f"e{i}",
        "experiment": experiment,
        "ts_ms": 1_700_000_000_000 + i,
        "policy_version": 0,
        "mode": "bandit",
        "context": {},
        "arms": ["a", "b"],
        "pmf": [0.5, 0.5],
        "chosen": "a",
        "forced": False,
        "status": 200,
        "latency_ms": 1.0,
    }


def a_result(experiment: str, i: int) -> ShadowResult:
    call = {"arm": "a", "status": 200, "latency_ms": 1.0}
    return {
        "event_id": f"e{i}",
        "experiment": experiment,
        "ts_ms": 1_700_000_000_000 + i,
        "primary": call,  # type: ignore[typeddict-item]
        "shadow": {**call, "arm": "b"},  # type: ignore[typeddict-item]
    }


async def shadow_results(redis: Redis, experiment: str) -> list[ShadowResult]:
    out: list[ShadowResult] = []
    for _, fields in await redis.xrange(keys.shadow_results(experiment)):
        out.extend(decode_shadow_batch(fields))
    return out


def decision_log(redis: Redis, **options: Any) -> DecisionLog:
    return DecisionLog(redis, index_events=False, **options)


def shadow_writer(redis: Redis, **options: Any) -> ShadowResults:
    if "flush_interval_s" in options:
        options["linger_s"] = options.pop("flush_interval_s")
    return ShadowResults(redis, **options)


# Each writer with what it writes, how to put one record, and how to read them back.
WRITERS = {
    "decisions": (
        decision_log,
        lambda writer, experiment, i: writer.append(a_decision(experiment, i), 60),
        logged_decisions,
    ),
    "shadow": (
        shadow_writer,
        lambda writer, experiment, i: writer.put(a_result(experiment, i)),
        shadow_results,
    ),
}


@pytest.fixture(params=sorted(WRITERS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_records_reach_redis_in_batches_and_in_order(redis, name, kind):
    make, put, read = WRITERS[kind]
    writer = make(redis, max_batch=100)
    for i in range(250):
        put(writer, name, i)
    await writer.stop()
    assert [r["event_id"] for r in await read(redis, name)] == [f"e{i}" for i in range(250)]
    assert writer.stats.flushed == 250 and writer.stats.batches == 3
    assert writer.pending == 0 and writer.stats.dropped == 0


async def test_the_flusher_writes_without_being_asked(redis, name, kind):
    make, put, read = WRITERS[kind]
    writer = make(redis, flush_interval_s=0.001)
    writer.start()
    try:
        for i in range(5):
            put(writer, name, i)

        async def written() -> bool:
            return len(await read(redis, name)) == 5

        await wait_for(written)
    finally:
        await writer.stop()
    assert writer.stats.appended == writer.stats.flushed == 5


async def test_a_full_queue_drops_the_oldest(redis, name, kind):
    make, put, read = WRITERS[kind]
    writer = make(redis, max_buffer=5)
    for i in range(8):
        put(writer, name, i)
    assert writer.pending == 5 and writer.stats.dropped == 3
    await writer.stop()
    assert [r["event_id"] for r in await read(redis, name)] == [f"e{i}" for i in range(3, 8)]


async def test_a_failed_flush_keeps_its_batch_and_order(redis, dead_redis, name, kind):
    make, put, read = WRITERS[kind]
    writer = make(dead_redis, max_batch=4, max_buffer=10)
    for i in range(6):
        put(writer, name, i)
    assert not await writer.flush_once()
    assert not await writer.flush_once()  # the same batch again, not the next one
    for i in range(6, 16):  # arrivals during the outage: the bound drops the oldest queued
        put(writer, name, i)
    assert writer.stats.flush_errors == 2 and writer.stats.dropped == 2
    assert writer.pending == 4 + 10
    writer.redis = redis
    await writer.stop()
    expected = [f"e{i}" for i in (0, 1, 2, 3, *range(6, 16))]
    assert [r["event_id"] for r in await read(redis, name)] == expected
    assert writer.stats.dropped == 2 and writer.pending == 0


async def test_stop_gives_up_at_its_deadline_and_says_what_was_lost(dead_redis, name, kind, caplog):
    make, put, _ = WRITERS[kind]
    writer = make(dead_redis)
    for i in range(3):
        put(writer, name, i)
    await writer.stop(timeout_s=0.05)
    assert writer.pending == 3 and writer.stats.flush_errors >= 1
    assert any("3" in r.getMessage() and "not flushed" in r.getMessage() for r in caplog.records)
