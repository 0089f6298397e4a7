"""Every test in this folder runs on a real local Redis Cluster (three masters) started here.

`redis_url` is overridden for the folder, so the shared fixtures (`redis`, `control`,
`start_router`, the ingest ones) all talk to the cluster through `redis+cluster://`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.redis_cluster import LocalCluster, available
from tests.reward_ingest.conftest import clock, settings  # noqa: F401  (fixtures)
from tests.router.conftest import start_router  # noqa: F401  (fixture)


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    if not available():
        pytest.skip("redis-server and redis-cli are not installed")
    with LocalCluster(masters=3) as local:
        yield local


@pytest.fixture(scope="session")
def redis_url(cluster: LocalCluster) -> str:
    return cluster.url
