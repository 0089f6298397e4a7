"""Routing through a Redis outage, and after Redis comes back empty (real redis-server)."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from banditgate.redis import connect
from banditgate.registry import PolicyRegistry
from banditgate.store import ExperimentStore
from router.app import create_app
from router.settings import RouterSettings
from tests.router.conftest import logged_decisions
from tests.router.redis_server import redis_server
from tests.support import Backend, make_spec, run_backend, serve_asgi, wait_for


async def test_routing_goes_on_through_an_outage_and_an_empty_restart_loses_nothing(
    tmp_path: Path, name: str
):
    with redis_server(tmp_path / "redis") as server:
        redis = connect(server.url, socket_timeout=1, socket_connect_timeout=0.5)
        async with run_backend(Backend()) as backend:
            spec = make_spec(name, [("a", backend.url)], policy={"learner": "thompson"})
            await ExperimentStore(redis).put(spec)
            model = b'{"alpha": {"a": 5}, "beta": {"a": 2}}'
            await PolicyRegistry(redis).publish(name, model, learner="thompson")
            settings = RouterSettings(
                redis_url=server.url, experiments=[name], data_dir=tmp_path / "data"
            )
            app = create_app(settings)
            async with serve_asgi(app) as url, aiohttp.ClientSession() as http:

                async def route(first: int, count: int) -> list[int]:
                    statuses = []
                    for i in range(first, first + count):
                        async with http.post(
                            f"{url}/endpoints/{name}/invocations",
                            json={"features": ["fine"]},
                            headers={"X-Amzn-SageMaker-Inference-Id": f"e{i}"},
                        ) as response:
                            statuses.append(response.status)
                    return statuses

                async def ready() -> dict:
                    async with http.get(f"{url}/health/ready") as response:
                        assert response.status == 200
                        return await response.json()

                assert await route(0, 10) == [200] * 10
                assert (await ready())["status"] == "ready"

                async def first_logged() -> bool:
                    return len(await logged_decisions(redis, name)) == 10

                await wait_for(first_logged)  # these are lost with Redis's data, not ours
                server.kill()
                assert await route(10, 20) == [200] * 20  # 100% through the outage
                body = await ready()
                assert body["status"] == "degraded" and "unreachable" in body["redis"]
                server.start()  # empty: no specs, no policies, no streams

                async def restored() -> bool:
                    try:
                        return (
                            await ExperimentStore(redis).find(name) is not None
                            and await PolicyRegistry(redis).current_version(name) is not None
                        )
                    except Exception:
                        return False

                await wait_for(restored, timeout=20)
                assert await route(30, 20) == [200] * 20
                assert await PolicyRegistry(redis).model(name, 1) == model

                async def logged() -> bool:
                    return len(await logged_decisions(redis, name)) >= 40

                await wait_for(logged, timeout=20)
                assert (await ready())["status"] == "ready"
            # Everything accepted after the restart's data loss is in the new stream, once.
            ids = [d["event_id"] for d in await logged_decisions(redis, name)]
            assert sorted(ids) == sorted(f"e{i}" for i in range(10, 50))
        await redis.aclose()
