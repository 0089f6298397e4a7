"""`banditgate ingest` and `banditgate control` answer the health routes a container probe calls."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from fastapi import FastAPI

from banditgate.redis import connect
from experiments.app import create_control_app
from experiments.settings import ControlSettings
from reward_ingest.app import create_ingest_app
from reward_ingest.settings import IngestSettings
from tests.support import serve_asgi


def ingest(url: str, **kwargs: Any) -> tuple[FastAPI, Any]:
    app = create_ingest_app(IngestSettings(redis_url=url), **kwargs)
    return app, app.state.ingest


def control(url: str, **kwargs: Any) -> tuple[FastAPI, Any]:
    app = create_control_app(ControlSettings(redis_url=url), **kwargs)
    return app, app.state.control


APPS = pytest.mark.parametrize("make", [ingest, control], ids=["ingest", "control"])


async def get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.json()


@APPS
async def test_live_and_ready_once_started(
    make: Callable[..., tuple[FastAPI, Any]], redis_url: str
) -> None:
    app, component = make(redis_url)
    async with serve_asgi(app) as base:
        assert await get(f"{base}/health/live") == (200, {"status": "live"})
        assert await get(f"{base}/health/ready") == (200, {"status": "ready"})
        await component.shutdown()
        status, body = await get(f"{base}/health/ready")
        assert status == 503
        assert body["error"] == {"type": "NotReady", "message": "not started"}
        assert await get(f"{base}/health/live") == (200, {"status": "live"})


@APPS
async def test_not_ready_while_redis_is_unreachable(
    make: Callable[..., tuple[FastAPI, Any]],
) -> None:
    unreachable = connect("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    app, _ = make("redis://127.0.0.1:1/0", redis=unreachable)
    try:
        async with serve_asgi(app) as base:
            status, body = await get(f"{base}/health/ready")
            assert await get(f"{base}/health/live") == (200, {"status": "live"})
    finally:
        await unreachable.aclose()
    assert status == 503
    assert body["error"]["type"] == "NotReady"
    assert body["error"]["message"].startswith("redis unreachable: ")
