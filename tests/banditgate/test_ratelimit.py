"""Rate limits per client and per key, over real HTTP: 429 with Retry-After, bounded state."""

from __future__ import annotations

import uuid

import aiohttp
import orjson
from pydantic import SecretStr

from banditgate.ratelimit import Buckets, classify
from experiments.app import create_control_app
from experiments.settings import ControlSettings
from reward_ingest.app import create_ingest_app
from reward_ingest.settings import IngestSettings
from tests.support import ADMIN_KEY, serve_asgi


def test_classes() -> None:
    assert classify("POST", "/v1/rewards") == "rewards"
    assert classify("POST", "/v1/events/e-1/reward") == "rewards"
    assert classify("POST", "/v1/experiments/x/rank") == "rank"
    assert classify("GET", "/v1/experiments/x") == "control"
    assert classify("GET", "/metrics") == "control"
    assert classify("GET", "/health/ready") is None
    assert classify("POST", "/endpoints/x/invocations") is None


def test_buckets_refill_and_stay_bounded() -> None:
    now = [0.0]
    buckets = Buckets(max_entries=100, clock=lambda: now[0])
    assert [buckets.take(("c", "a"), 1.0) for _ in range(3)] == [0.0, 0.0, 1.0]
    now[0] += 1.0
    assert buckets.take(("c", "a"), 1.0) == 0.0
    # Refusals charged after the fact (concurrent requests) become a debt to wait out.
    for _ in range(5):
        buckets.charge(("auth", "a"), 1.0)
    assert buckets.take(("auth", "a"), 1.0, spend=False) == 4.0
    for client in range(10_000):
        buckets.take(("c", f"10.0.{client // 256}.{client % 256}"), 1.0)
    assert len(buckets) == 100


async def _get(http: aiohttp.ClientSession, url: str, key: str) -> tuple[int, str | None]:
    async with http.get(url, headers={"authorization": f"Bearer {key}"}) as response:
        await response.read()
        return response.status, response.headers.get("retry-after")


async def test_control_plane_requests_and_refused_keys_are_limited(redis_url: str) -> None:
    settings = ControlSettings(
        redis_url=redis_url,
        admin_keys=[SecretStr(ADMIN_KEY)],
        # Slow rates (a burst of one) so that no refill can happen during the test.
        rate_limit_control_per_s=0.2,
        rate_limit_auth_failures_per_s=0.2,
    )
    async with serve_asgi(create_control_app(settings)) as url, aiohttp.ClientSession() as http:
        answers = [await _get(http, f"{url}/v1/experiments", ADMIN_KEY) for _ in range(3)]
        assert [status for status, _ in answers] == [200, 429, 429]
        assert all(int(retry) >= 1 for _, retry in answers[1:])
        # Health is not limited.
        async with http.get(f"{url}/health/live") as response:
            assert response.status == 200

    async with serve_asgi(create_control_app(settings)) as url, aiohttp.ClientSession() as http:
        guesses = [await _get(http, f"{url}/v1/experiments", f"guess-{i}") for i in range(3)]
        assert [status for status, _ in guesses] == [403, 429, 429]
        # Even the right key waits once this client has guessed too often.
        status, retry_after = await _get(http, f"{url}/v1/experiments", ADMIN_KEY)
        assert status == 429 and retry_after is not None and int(retry_after) >= 1


async def test_rewards_are_limited_per_client(redis_url: str, tmp_path) -> None:
    settings = IngestSettings(redis_url=redis_url, data_dir=tmp_path, rate_limit_rewards_per_s=0.2)
    body = orjson.dumps({"event_id": f"unknown-{uuid.uuid4().hex}", "value": 0.5})
    statuses = []
    async with serve_asgi(create_ingest_app(settings)) as url, aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.post(
                f"{url}/v1/rewards", data=body, headers={"content-type": "application/json"}
            ) as response:
                statuses.append(response.status)
                if response.status == 429:
                    assert int(response.headers["retry-after"]) >= 1
                    assert (await response.json())["error"]["type"] == "TooManyRequests"
    assert statuses == [202, 429, 429]
