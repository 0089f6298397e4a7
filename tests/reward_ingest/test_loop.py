"""The reward loop end to end: router decision, reward webhook, joiner, joined example."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import orjson

from banditgate.store import ExperimentStore
from banditgate_app.apps import serve_app
from reward_ingest.settings import IngestSettings
from reward_ingest.worker import Joiner
from tests.reward_ingest.conftest import joined_examples
from tests.support import make_spec, run_backend, serve_asgi, wait_for

ROOT = Path(__file__).resolve().parents[2]


async def test_router_decision_then_webhook_reward_then_joined(
    redis, redis_url, name, monkeypatch, data_dir
):
    monkeypatch.setenv("BANDITGATE_REDIS_URL", redis_url)
    monkeypatch.setenv("BANDITGATE_EXPERIMENTS", name)
    async with run_backend() as one, run_backend() as two:
        spec = make_spec(
            name,
            [("bert-1", one.url), ("bert-2", two.url)],
            reward={"window_s": 30, "aggregation": "earliest"},
        )
        await ExperimentStore(redis).put(spec)
        settings = IngestSettings(redis_url=redis_url, data_dir=data_dir, join_max_block_ms=50)
        stop = asyncio.Event()
        joiner = asyncio.create_task(
            Joiner(redis=redis, settings=settings, experiments=[name]).run(stop)
        )
        try:
            async with (
                serve_asgi(serve_app(with_control=False)) as url,
                aiohttp.ClientSession() as http,
            ):
                async with http.post(
                    f"{url}/endpoints/{name}/invocations",
                    data=orjson.dumps({"features": ["I love it!"]}),
                    headers={"content-type": "application/json"},
                ) as response:
                    assert response.status == 200
                    event_id = response.headers["x-banditgate-event-id"]
                    variant = response.headers["x-banditgate-variant"]
                # The reward names no experiment: the event index (or the resolver) finds it.
                async with http.post(
                    f"{url}/v1/events/{event_id}/reward", data=b'{"value": 1}'
                ) as response:
                    assert response.status == 202

                async def joined() -> bool:
                    return len(await joined_examples(redis, name)) == 1

                await wait_for(joined)
        finally:
            stop.set()
            await asyncio.wait_for(joiner, timeout=10)
    (example,) = await joined_examples(redis, name)
    assert example["decision"]["event_id"] == event_id
    assert example["decision"]["chosen"] == variant
    assert example["reward"] == 1.0 and example["rewarded"] is True
