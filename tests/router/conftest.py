from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from banditgate import keys
from banditgate.events import Decision, decode_decision_batch
from banditgate.redis import Redis
from banditgate.spec import ExperimentSpec
from banditgate.store import ExperimentStore
from router.app import RouterApp, create_app
from router.settings import RouterSettings
from tests.support import serve_asgi


@pytest.fixture
async def start_router(redis: Redis, redis_url: str) -> AsyncIterator[Callable[..., Any]]:
    """`await start_router(spec, **settings)` -> (base_url, app), served on loopback."""
    stack = contextlib.AsyncExitStack()

    async def start(*specs: ExperimentSpec, **settings: Any) -> tuple[str, RouterApp]:
        store = ExperimentStore(redis)
        for spec in specs:
            await store.put(spec)
        settings.setdefault("experiments", [spec.name for spec in specs])
        app = create_app(RouterSettings(redis_url=redis_url, **settings))
        url = await stack.enter_async_context(serve_asgi(app))
        return url, app

    try:
        yield start
    finally:
        await stack.aclose()


async def logged_decisions(redis: Redis, experiment: str) -> list[Decision]:
    entries = await redis.xrange(keys.decisions(experiment))
    decisions: list[Decision] = []
    for _, fields in entries:
        decisions.extend(decode_decision_batch(fields))
    return decisions
