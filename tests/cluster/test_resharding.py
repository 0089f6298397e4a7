"""An experiment's slot moved to another master while traffic runs: the client follows
MOVED and ASK, nothing reaches a client as an error, and nothing is lost or doubled."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from banditgate import keys
from banditgate.redis import Redis, connect
from banditgate.store import ExperimentStore
from banditgate_app.apps import serve_app
from reward_ingest.settings import IngestSettings
from reward_ingest.worker import Joiner
from tests.redis_cluster import LocalCluster, available, cli
from tests.reward_ingest.conftest import joined_examples
from tests.router.conftest import logged_decisions
from tests.support import make_spec, run_backend, serve_asgi, wait_for

pytestmark = pytest.mark.skipif(not available(), reason="redis-server is not installed")

REQUESTS = 400


def migrate_slot(cluster: LocalCluster, slot: int, source: int, target: int) -> int:
    """Move `slot` from `source` to `target` as `redis-cli --cluster reshard` does; keys moved."""
    source_id = cli(source, "cluster", "myid").strip()
    target_id = cli(target, "cluster", "myid").strip()
    cli(target, "cluster", "setslot", str(slot), "importing", source_id)
    cli(source, "cluster", "setslot", str(slot), "migrating", target_id)
    moved = 0
    while True:
        batch = cli(source, "cluster", "getkeysinslot", str(slot), "2").split()
        if not batch:
            break
        reply = cli(source, "migrate", "127.0.0.1", str(target), "", "0", "5000", "keys", *batch)
        assert "OK" in reply or "NOKEY" in reply, reply
        moved += len(batch)
    for port in cluster.ports:
        cli(port, "cluster", "setslot", str(slot), "node", target_id)
    return moved


async def _counts(redis: Redis, name: str) -> tuple[list[str], list[str]]:
    decided = [d["event_id"] for d in await logged_decisions(redis, name)]
    joined = [j["decision"]["event_id"] for j in await joined_examples(redis, name)]
    return decided, joined


async def test_moving_the_slot_during_traffic_is_retried_not_surfaced(name, monkeypatch, data_dir):
    with LocalCluster(masters=3) as cluster:
        url = cluster.url
        monkeypatch.setenv("BANDITGATE_REDIS_URL", url)
        monkeypatch.setenv("BANDITGATE_EXPERIMENTS", name)
        redis = connect(url)
        stop = asyncio.Event()
        joiner: asyncio.Task[None] | None = None
        try:
            slot = redis.keyslot(keys.decisions(name))
            source = cluster.master_of_slot(slot)
            target = next(port for port in cluster.ports if port != source)
            async with run_backend() as one, run_backend() as two:
                spec = make_spec(
                    name, [("a", one.url), ("b", two.url)], reward={"window_s": 1, "default": 0.0}
                )
                await ExperimentStore(redis).put(spec)
                settings = IngestSettings(redis_url=url, data_dir=data_dir, join_max_block_ms=50)
                joiner = asyncio.create_task(
                    Joiner(redis=redis, settings=settings, experiments=[name]).run(stop)
                )
                statuses: list[int] = []
                accepted: list[str] = []
                moved: list[int] = []
                async with (
                    serve_asgi(serve_app(with_control=False)) as base,
                    aiohttp.ClientSession() as http,
                ):
                    gate = asyncio.Semaphore(8)

                    async def one_request(i: int) -> None:
                        async with gate:
                            if i == REQUESTS // 3:
                                moved.append(
                                    await asyncio.to_thread(
                                        migrate_slot, cluster, slot, source, target
                                    )
                                )
                            async with http.post(
                                f"{base}/endpoints/{name}/invocations",
                                json={"features": [f"request {i}"]},
                            ) as response:
                                await response.read()
                                statuses.append(response.status)
                                if response.status == 200:
                                    accepted.append(response.headers["x-banditgate-event-id"])
                                    # Rewards too: the reward stream moves with the slot.
                                    event = response.headers["x-banditgate-event-id"]
                                    async with http.post(
                                        f"{base}/v1/events/{event}/reward", json={"value": 1}
                                    ) as reward:
                                        statuses.append(reward.status)
                            await asyncio.sleep(0.003)

                    await asyncio.gather(*(one_request(i) for i in range(REQUESTS)))
                    assert cluster.master_of_slot(slot) == target

                    async def settled() -> bool:
                        decided, joined = await _counts(redis, name)
                        return len(decided) == len(accepted) and set(joined) >= set(decided)

                    await wait_for(settled, timeout=60, every=0.5)
            decided, joined = await _counts(redis, name)
            examples = await joined_examples(redis, name)
        finally:
            stop.set()
            if joiner is not None:
                await asyncio.wait_for(joiner, timeout=20)
            await redis.aclose()
    assert moved and moved[0] > 0  # the experiment's keys really moved
    assert set(statuses) == {200, 202}  # no MOVED/ASK reached a client
    assert len(accepted) == REQUESTS
    assert sorted(decided) == sorted(accepted)  # each logged once
    assert sorted(joined) == sorted(accepted)  # each joined once
    assert sum(1 for e in examples if e["rewarded"]) > 0
