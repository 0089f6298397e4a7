"""The decision log under what Redis and callers do to it: poison, size, outages, freezes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from banditgate.redis import Redis, connect
from router.decision_log import DecisionLog
from tests.router.conftest import logged_decisions
from tests.router.redis_server import redis_server
from tests.router.test_stream_writer import a_decision


class NotJSON:
    pass


@pytest.fixture
async def dead_redis() -> AsyncIterator[Redis]:
    client = connect("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)  # nothing listens
    try:
        yield client
    finally:
        await client.aclose()


async def test_an_unencodable_decision_costs_only_its_own_entry(redis, name, caplog):
    log = DecisionLog(redis, index_events=False)
    poisoned: Any = a_decision(name, 1)
    poisoned["context"] = {"x": NotJSON()}
    assert log.append(a_decision(name, 0), 60)
    assert not log.append(poisoned, 60)
    assert log.append(a_decision(name, 2), 60)
    await log.stop()
    assert [d["event_id"] for d in await logged_decisions(redis, name)] == ["e0", "e2"]
    assert log.stats.unencodable == 1 and log.stats.dropped == 0
    assert any("cannot be encoded" in r.getMessage() for r in caplog.records)


async def test_batches_are_bounded_in_bytes(redis, name):
    log = DecisionLog(redis, index_events=False, max_batch_bytes=2048)
    for i in range(40):
        decision = a_decision(name, i)
        decision["context"] = {"text": "x" * 200}
        log.append(decision, 60)
    await log.stop()
    entries = await redis.xrange(f"bg:{{{name}}}:decisions")
    assert all(len(fields[b"b"]) <= 2048 for _, fields in entries)
    assert len(entries) > 1
    assert [d["event_id"] for d in await logged_decisions(redis, name)] == [
        f"e{i}" for i in range(40)
    ]


async def test_a_batch_redis_refuses_is_split_and_only_the_oversized_record_dropped(
    tmp_path: Path, name: str
):
    # proto-max-bulk-len 1mb: Redis drops the connection on a larger argument.
    with redis_server(tmp_path, "--proto-max-bulk-len", "1mb") as server:
        client = connect(server.url, socket_timeout=2)
        try:
            log = DecisionLog(client, index_events=False, max_batch_bytes=8 * 1024 * 1024)
            for i in range(30):
                decision = a_decision(name, i)
                if i == 10:
                    decision["context"] = {"text": "y" * (1200 * 1024)}
                log.append(decision, 60)
            await log.stop(timeout_s=20)
            logged = [d["event_id"] for d in await logged_decisions(client, name)]
        finally:
            await client.aclose()
    assert logged == [f"e{i}" for i in range(30) if i != 10]
    assert log.stats.rejected == 1 and log.pending == 0


async def test_a_frozen_redis_doubles_nothing(tmp_path: Path, name: str):
    with redis_server(tmp_path) as server:
        client = connect(server.url, socket_timeout=0.3)
        try:
            log = DecisionLog(client, flush_interval_s=0.001)
            log.start()
            for i in range(50):
                log.append(a_decision(name, i), 60)
            await asyncio.sleep(0.2)
            server.freeze()
            for i in range(50, 300):
                log.append(a_decision(name, i), 60)
                if i % 25 == 0:
                    await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # flushes time out while their commands wait in Redis
            assert log.stats.flush_errors >= 1
            server.thaw()
            await log.stop(timeout_s=20)
            logged = [d["event_id"] for d in await logged_decisions(client, name)]
        finally:
            await client.aclose()
    assert logged == [f"e{i}" for i in range(300)]
    assert log.stats.replayed >= 1  # a batch had landed although its reply was lost


async def test_an_outage_spills_to_a_bounded_file_and_replays_in_order(tmp_path: Path, name: str):
    with redis_server(tmp_path / "r") as server:
        client = connect(server.url, socket_timeout=0.5, socket_connect_timeout=0.2)
        try:
            log = DecisionLog(client, max_buffer=20, spill_dir=tmp_path / "spill", max_batch=7)
            for i in range(5):
                log.append(a_decision(name, i), 60)
            assert await log.flush_once()
            server.kill()
            for i in range(5, 105):
                assert log.append(a_decision(name, i), 60)
            assert not await log.flush_once()
            assert log.stats.spilled == 80 and log.pending == 100
            spilled = list((tmp_path / "spill").iterdir())
            assert len(spilled) == 1 and spilled[0].stat().st_size > 0
            server.start()  # empty: the outage lost nothing of ours, the log still has it
            await log.stop(timeout_s=20)
            logged = [d["event_id"] for d in await logged_decisions(client, name)]
        finally:
            await client.aclose()
    assert logged == [f"e{i}" for i in range(5, 105)]
    assert not list((tmp_path / "spill").iterdir()) and log.pending == 0


async def test_a_full_spill_file_drops_and_counts(tmp_path: Path, name: str, dead_redis):
    log = DecisionLog(
        dead_redis, max_buffer=2, spill_dir=tmp_path, spill_max_bytes=1500, index_events=False
    )
    accepted = [log.append(a_decision(name, i), 60) for i in range(20)]
    assert accepted[:2] == [True, True] and not all(accepted)
    assert log.stats.dropped == accepted.count(False) > 0
    assert (tmp_path / next(p.name for p in tmp_path.iterdir())).stat().st_size <= 1500
