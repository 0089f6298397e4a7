"""A master killed during traffic: its replica is promoted, and what was accepted is counted.

Replication in Redis is asynchronous, so a write the dead master acknowledged but had not
yet sent to its replica is gone; the router's decision log keeps unwritten batches in
memory and retries them through the failover. The test counts every stage.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from banditgate import keys
from banditgate.redis import Redis, connect
from banditgate.registry import PolicyRegistry
from banditgate.store import ExperimentStore
from banditgate_app.apps import serve_app
from reward_ingest.settings import IngestSettings
from reward_ingest.worker import Joiner
from tests.redis_cluster import LocalCluster, available
from tests.reward_ingest.conftest import joined_examples
from tests.router.conftest import logged_decisions
from tests.router.test_policy_serving import trained_model
from tests.support import make_spec, run_backend, serve_asgi, wait_for

log = logging.getLogger(__name__)

pytestmark = pytest.mark.skipif(not available(), reason="redis-server is not installed")

REQUESTS = 600
KILL_AFTER = 200


async def _counts(redis: Redis, name: str) -> tuple[list[str], list[str]]:
    decided = [d["event_id"] for d in await logged_decisions(redis, name)]
    joined = [j["decision"]["event_id"] for j in await joined_examples(redis, name)]
    return decided, joined


async def test_a_master_killed_during_traffic_keeps_what_was_accepted(name, monkeypatch, data_dir):
    with LocalCluster(masters=3, replicas=1, node_timeout_ms=1000) as cluster:
        url = cluster.url
        monkeypatch.setenv("BANDITGATE_REDIS_URL", url)
        monkeypatch.setenv("BANDITGATE_EXPERIMENTS", name)
        redis = connect(url)
        stop = asyncio.Event()
        joiner: asyncio.Task[None] | None = None
        try:
            victim = cluster.master_of_slot(redis.keyslot(keys.decisions(name)))
            async with run_backend() as one, run_backend() as two:
                spec = make_spec(
                    name,
                    [("a", one.url), ("b", two.url)],
                    reward={"window_s": 1, "default": 0.0},
                )
                await ExperimentStore(redis).put(spec)
                settings = IngestSettings(redis_url=url, data_dir=data_dir, join_max_block_ms=50)
                joiner = asyncio.create_task(
                    Joiner(redis=redis, settings=settings, experiments=[name]).run(stop)
                )
                statuses: list[int] = []
                accepted: list[str] = []
                async with (
                    serve_asgi(serve_app(with_control=False)) as base,
                    aiohttp.ClientSession() as http,
                ):
                    gate = asyncio.Semaphore(8)

                    async def one_request(i: int) -> None:
                        async with gate:
                            if i == KILL_AFTER:
                                cluster.kill(victim)
                            async with http.post(
                                f"{base}/endpoints/{name}/invocations",
                                json={"features": [f"request {i}"]},
                            ) as response:
                                await response.read()
                                statuses.append(response.status)
                                if response.status == 200:
                                    accepted.append(response.headers["x-banditgate-event-id"])
                            await asyncio.sleep(0.005)

                    await asyncio.gather(*(one_request(i) for i in range(REQUESTS)))
                    await asyncio.to_thread(cluster.wait_ok, 30.0)
                    # The dead master's replica now serves the experiment's slot.
                    promoted = cluster.master_of_slot(redis.keyslot(keys.decisions(name)))
                    assert promoted != victim

                    async def settled() -> bool:
                        decided, joined = await _counts(redis, name)
                        return len(decided) > 0 and set(joined) >= set(decided)

                    await wait_for(settled, timeout=60, every=0.5)
                    # Announcements still reach the router: a policy published now is served.
                    await PolicyRegistry(redis).publish(
                        name, trained_model(spec, best="b"), learner="vw", source="test"
                    )

                    async def serves_version_1() -> bool:
                        async with http.get(f"{base}/health/ready") as response:
                            ready = await response.json()
                        return bool(ready["experiments"][name]["policy_version"] == 1)

                    await wait_for(serves_version_1, timeout=30, every=0.2)
            decided, joined = await _counts(redis, name)
        finally:
            stop.set()
            if joiner is not None:
                await asyncio.wait_for(joiner, timeout=20)
            await redis.aclose()
    lost = set(accepted) - set(decided)
    log.warning(
        "failover: %d requests, %d answered 200, %d decisions logged (%d duplicates), "
        "%d lost, %d joined (%d duplicates)",
        REQUESTS,
        len(accepted),
        len(decided),
        len(decided) - len(set(decided)),
        len(lost),
        len(joined),
        len(joined) - len(set(joined)),
    )
    print(
        f"FAILOVER requests={REQUESTS} accepted={len(accepted)} decided={len(decided)} "
        f"unique_decided={len(set(decided))} lost={len(lost)} joined={len(joined)} "
        f"unique_joined={len(set(joined))}"
    )
    assert statuses.count(200) == REQUESTS  # the failover never reached a client
    assert set(decided) <= set(accepted)
    assert set(joined) == set(decided)  # every surviving decision was joined
    assert len(joined) == len(set(joined))  # and exactly once
    assert len(lost) == 0
