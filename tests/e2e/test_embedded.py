"""The fresh-clone path: no Redis server configured, an embedded redis-server under the data dir."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
import redis as redis_sync

from banditgate.redis import EmbeddedRedis, connect
from banditgate.store import ExperimentStore
from router.app import create_app
from router.settings import RouterSettings
from tests.router.conftest import logged_decisions
from tests.support import make_spec, run_backend, serve_asgi, wait_for


async def test_router_on_embedded_redis(tmp_path: Path) -> None:
    embedded = EmbeddedRedis(tmp_path / "data")
    url = embedded.url
    assert url.startswith("unix://")
    client = connect(url)
    try:
        async with run_backend() as backend:
            spec = make_spec("embedded", [("a", backend.url), ("b", backend.url)])
            await ExperimentStore(client).put(spec)
            app = create_app(RouterSettings(redis_url=url))
            async with serve_asgi(app) as base:
                async with aiohttp.ClientSession() as http:
                    async with http.post(
                        f"{base}/endpoints/embedded/invocations", json={"features": ["fine"]}
                    ) as response:
                        assert response.status == 200
                    async with http.get(f"{base}/health/ready") as response:
                        ready = await response.json()
                await wait_for(lambda: _one(client))
        assert ready["status"] == "ready"
        assert ready["experiments"]["embedded"]["policy_version"] == 0
        info = await client.info("server")
        assert str(info["redis_version"]).split(".")[0] >= "6"
    finally:
        await client.aclose()
        embedded.close()
    assert (tmp_path / "data" / "redis.db").exists()
    with pytest.raises(redis_sync.ConnectionError):
        redis_sync.Redis.from_url(url, socket_connect_timeout=0.5).ping()


async def _one(client) -> bool:  # type: ignore[no-untyped-def]
    return len(await logged_decisions(client, "embedded")) == 1
