from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr

from banditgate.redis import EmbeddedRedis, Redis, connect
from experiments.app import create_control_app
from experiments.settings import ControlSettings
from tests.redis_cluster import LocalCluster, flush
from tests.support import ADMIN_KEY, Control, serve_asgi


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The machine's Redis when BANDITGATE_REDIS_URL is set, else an embedded redis-server."""
    url = os.environ.get("BANDITGATE_REDIS_URL")
    if os.environ.get("BANDITGATE_TEST_CLUSTER") == "1":
        # The whole suite on a local three-master Redis Cluster started here.
        with LocalCluster() as cluster:
            yield cluster.url
        return
    if url:
        # The suite owns this database: start from empty, as on a fresh embedded server.
        flush(url)
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


@pytest.fixture
async def control(redis_url: str) -> AsyncIterator[Control]:
    """The control plane on loopback, in the test's event loop, keyed with ADMIN_KEY."""
    settings = ControlSettings(redis_url=redis_url, admin_keys=[SecretStr(ADMIN_KEY)])
    app = create_control_app(settings)
    async with serve_asgi(app) as url, aiohttp.ClientSession() as http:
        yield Control(url, http, app)
