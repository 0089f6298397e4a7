"""No accepted reward is lost: a resolver backlog, retries, and a Redis that restarts empty."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import orjson
from redis.exceptions import RedisError

from banditgate import keys
from banditgate.events import reward_fields
from banditgate.redis import Redis, connect
from banditgate.store import ExperimentStore
from reward_ingest.app import create_ingest_app
from reward_ingest.settings import IngestSettings
from reward_ingest.worker import Joiner
from tests.faults import redis_server
from tests.reward_ingest.conftest import (
    Clock,
    by_event,
    counters,
    decision,
    joined_examples,
    log_decisions,
    reward_spec,
)
from tests.support import serve_asgi, wait_for

N = 2_500  # more than one resolver read (1,000)


async def post(url: str, body: object) -> tuple[int, dict[str, object], dict[str, str]]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, data=orjson.dumps(body), headers={"content-type": "application/json"}) as r,
    ):
        return r.status, orjson.loads(await r.read()), dict(r.headers)


async def test_windows_wait_for_the_resolvers_backlog(
    experiment, make_joiner, ingest_url, redis, name, clock: Clock
) -> None:
    await experiment(aggregation="sum", window_s=10)
    joiner: Joiner = make_joiner()
    assert joiner.resolver is not None
    await joiner.refresh()
    await joiner.resolver.run_once()  # the resolver ran once, then fell behind
    url = await ingest_url()
    ids = [f"{name}-{i}" for i in range(N)]
    # The rewards come before the router flushed their decisions: all go unrouted.
    rewards = [{"event_id": event_id, "value": 1.0} for event_id in ids]
    status, body, _ = await post(f"{url}/v1/rewards", {"rewards": rewards})
    assert status == 202 and body["accepted"] == N and body["unrouted"] == N
    await log_decisions(redis, [decision(name, event_id, clock.ms - 100) for event_id in ids])

    clock.advance(20)  # every window has ended; the resolver has not run since
    await joiner.drain(name)
    assert await joined_examples(redis, name) == []  # held open, not closed with the default

    await joiner.resolver.run_once()
    await joiner.drain(name)
    joined = by_event(await joined_examples(redis, name))
    assert len(joined) == N
    assert all(example["rewarded"] and example["reward"] == 1.0 for example in joined.values())
    c = await counters(redis, name)
    assert c["rewards_joined"] == N
    assert c.get("rewards_late", 0) == 0


async def test_after_redis_restarts_empty_the_resolver_and_joiner_recreate_their_groups(
    tmp_path: Path, name: str
) -> None:
    spec = reward_spec(name, aggregation="sum", window_s=1.0)
    with redis_server(tmp_path / "redis") as server:
        redis = connect(server.url)
        settings = IngestSettings(
            redis_url=server.url,
            data_dir=tmp_path / "data",
            join_refresh_s=0.1,
            unrouted_retry_ms=20,
            join_clock_skew_ms=0,
        )
        stop = asyncio.Event()
        joiner = asyncio.create_task(Joiner(redis=redis, settings=settings).run(stop))

        async def joined_with_reward(event_id: str, value: float) -> None:
            async def done() -> bool:
                assert not joiner.done(), joiner
                try:
                    examples = by_event(await joined_examples(redis, name))
                except (RedisError, OSError):
                    return False
                example = examples.get(event_id)
                if example is None:
                    return False
                assert example["rewarded"] and example["reward"] == value, example
                return True

            await wait_for(done, timeout=30, every=0.05)

        async def one_unrouted_reward(event_id: str, value: float) -> None:
            await ExperimentStore(redis).put(spec)
            now = int(time.time() * 1000)
            fields = reward_fields({"event_id": event_id, "value": value, "ts_ms": now})
            await redis.xadd(keys.UNROUTED_REWARDS, fields)  # type: ignore[arg-type]
            await log_decisions(redis, [decision(name, event_id, now - 5)])

        try:
            await one_unrouted_reward("before", 2.0)
            await joined_with_reward("before", 2.0)
            server.restart()  # empty: every group, stream and spec is gone
            await wait_for(lambda: _answers(redis), timeout=10)
            await one_unrouted_reward("after", 3.0)
            await joined_with_reward("after", 3.0)
        finally:
            stop.set()
            await asyncio.wait_for(joiner, timeout=30)
            await redis.aclose()


async def _answers(redis: Redis) -> bool:
    try:
        return bool(await redis.ping())
    except (RedisError, OSError):
        return False


async def test_rewards_refused_while_redis_is_down_say_when_to_retry(
    tmp_path: Path, name: str
) -> None:
    with redis_server(tmp_path / "redis") as server:
        app = create_ingest_app(IngestSettings(redis_url=server.url, data_dir=tmp_path / "data"))
        async with serve_asgi(app) as url:
            server.kill()
            reward = {"event_id": "e-1", "value": 0.5}
            status, body, headers = await post(f"{url}/v1/rewards", reward)
            assert status == 503, body
            assert body["error"]["type"] == "NotReady"
            assert headers["Retry-After"] == "1"
            server.start()
            status, body, _ = await post(f"{url}/v1/rewards", reward)
            assert status == 202 and body["unrouted"] == 1


async def test_a_retried_reward_with_an_idempotency_key_counts_once_under_sum(
    experiment, make_joiner, ingest_url, redis, name, clock: Clock
) -> None:
    await experiment(aggregation="sum", window_s=10)
    url = await ingest_url()
    await log_decisions(redis, [decision(name, f"{name}-{i}", clock.ms - 10) for i in range(3)])
    sent = [
        {"event_id": f"{name}-0", "value": 1.0, "idempotency_key": "a"},
        {"event_id": f"{name}-0", "value": 1.0, "idempotency_key": "a"},  # a retry
        {"event_id": f"{name}-0", "value": 2.0, "idempotency_key": "b"},  # another reward
        {"event_id": f"{name}-1", "value": 1.0, "idempotency_key": "a"},  # same key, other event
        {"event_id": f"{name}-2", "value": 1.0},
        {"event_id": f"{name}-2", "value": 1.0},  # no key: two rewards
    ]
    status, body, _ = await post(f"{url}/v1/rewards", {"rewards": sent[:3]})
    assert status == 202 and body["accepted"] == 3
    joiner = make_joiner()
    await joiner.run_once()
    for item in sent[3:]:
        status, _, _ = await post(f"{url}/v1/rewards", item)
        assert status == 202
    # A retry in a later batch, through the header and the event route.
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{url}/v1/events/{name}-0/reward",
            data=b'{"value": 1.0}',
            headers={"content-type": "application/json", "idempotency-key": "a"},
        ) as response,
    ):
        assert response.status == 202
    clock.advance(20)
    await joiner.run_once()
    joined = by_event(await joined_examples(redis, name))
    assert {event_id: example["reward"] for event_id, example in joined.items()} == {
        f"{name}-0": 3.0,
        f"{name}-1": 1.0,
        f"{name}-2": 2.0,
    }
    c = await counters(redis, name)
    assert c["rewards_duplicate"] == 2
    assert c["rewards_received"] == c["rewards_joined"] + c["rewards_duplicate"]


async def test_an_idempotency_key_must_be_printable_ascii(ingest_url, experiment, name) -> None:
    await experiment()
    url = await ingest_url()
    reward = {"event_id": "e", "value": 0.5, "experiment": name, "idempotency_key": "é" * 3}
    status, body, _ = await post(f"{url}/v1/rewards", reward)
    assert status == 422
    assert body["error"]["field"] == "idempotency_key"
