from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis as redis_sync

from banditgate.redis import EmbeddedRedis, Redis, connect


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The machine's Redis when BANDITGATE_REDIS_URL is set, else an embedded redis-server."""
    url = os.environ.get("BANDITGATE_REDIS_URL")
    if url:
        # The suite owns this database: start from empty, as on a fresh embedded server.
        client = redis_sync.Redis.from_url(url)
        client.flushdb()
        client.close()
        yield url
        return
    embedded = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    try:
        yield embedded.url
    finally:
        embedded.close()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = connect(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def name() -> str:
    """A fresh experiment name, so tests never see each other's keys."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"
