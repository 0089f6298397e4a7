"""The router's own metrics on /metrics: losses while Redis is away, swaps, requests in flight."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from banditgate.redis import connect
from banditgate.registry import PolicyRegistry
from tests.router.test_policy_serving import trained_model
from tests.support import Backend, make_spec, run_backend, wait_for

Labels = tuple[tuple[str, str], ...]


def metric_values(text: bytes | str, family: str) -> dict[Labels, float]:
    """Sample values of one metric family (counters without their `_created` samples)."""
    if isinstance(text, bytes):
        text = text.decode()
    out: dict[Labels, float] = {}
    for metric in text_string_to_metric_families(text):
        if metric.name != family:
            continue
        for sample in metric.samples:
            if not sample.name.endswith("_created"):
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


async def scrape(url: str, family: str) -> float | None:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as response:
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/plain")
        return metric_values(await response.text(), family).get(())


async def post(url: str, name: str) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}/endpoints/{name}/invocations", json={"features": ["x"]}) as response,
    ):
        await response.read()
        return response.status


async def test_a_router_on_its_own_serves_its_counters(start_router, redis, name):
    async with run_backend() as a, run_backend() as b:
        spec = make_spec(name, [("a", a.url), ("b", b.url)])
        url, app = await start_router(spec)
        assert await post(url, name) == 200
        assert await scrape(url, "banditgate_router_policy_swaps") == 0.0
        await PolicyRegistry(redis).publish(name, trained_model(spec, best="b"), learner="vw")

        async def swapped() -> bool:
            return await scrape(url, "banditgate_router_policy_swaps") == 1.0

        await wait_for(swapped)
        assert app.runtime is not None and app.runtime.swaps == 1

        async def flushed() -> bool:
            return await scrape(url, "banditgate_router_decision_log_pending") == 0.0

        await wait_for(flushed)
        assert await scrape(url, "banditgate_router_decisions_dropped") == 0.0
        assert await scrape(url, "banditgate_router_decision_log_flush_failures") == 0.0


async def test_decisions_lost_while_redis_is_away_are_counted(start_router, redis, name):
    async with run_backend() as backend:
        url, app = await start_router(
            make_spec(name, [("a", backend.url)]),
            log_buffer_max=5,
            log_spill_max_bytes=0,
            flush_max_batch=1,
        )
        log = app.log
        assert log is not None
        healthy = log.redis
        log.redis = connect("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)  # nothing listens
        try:
            for _ in range(8):
                assert await post(url, name) == 200

            async def held() -> bool:
                pending = await scrape(url, "banditgate_router_decision_log_pending")
                dropped = await scrape(url, "banditgate_router_decisions_dropped")
                return pending is not None and dropped is not None and pending + dropped == 8

            await wait_for(held)
            # Nothing was written: the log holds its bound (the queue, plus the batch
            # being retried), and without a spill file the rest was dropped and counted.
            dropped = await scrape(url, "banditgate_router_decisions_dropped")
            assert dropped is not None and dropped >= 2
            # The log's failed flushes say Redis is away, without a readiness probe.
            assert await scrape(url, "banditgate_router_redis_up") == 0.0
            failures = await scrape(url, "banditgate_router_decision_log_flush_failures")
            assert failures is not None and failures >= 1
        finally:
            await log.redis.aclose()
            log.redis = healthy

        async def recovered() -> bool:
            return await scrape(url, "banditgate_router_decision_log_pending") == 0.0

        await wait_for(recovered)
        assert await scrape(url, "banditgate_router_redis_up") == 1.0
    assert log.stats.dropped == dropped and log.stats.flushed == 8 - dropped


async def test_requests_in_flight_are_a_gauge_an_autoscaler_can_read(start_router, name):
    """banditgate_router_in_flight (the HPA's Pods metric in deploy/k8s) counts open calls."""
    gate = asyncio.Event()

    async def held(request: web.Request, body: bytes) -> web.StreamResponse:
        await gate.wait()
        return web.json_response({"predicted_label": 1})

    async with run_backend(Backend(reply=held)) as backend:
        url, _ = await start_router(make_spec(name, [("a", backend.url)]))
        assert await scrape(url, "banditgate_router_in_flight") == 0.0
        calls = [asyncio.create_task(post(url, name)) for _ in range(3)]

        async def three() -> bool:
            # The scrape itself is not a data-plane request.
            return await scrape(url, "banditgate_router_in_flight") == 3.0

        await wait_for(three)
        gate.set()
        assert await asyncio.gather(*calls) == [200, 200, 200]
        assert await scrape(url, "banditgate_router_in_flight") == 0.0


async def test_requests_in_flight_per_arm(start_router, name):
    """banditgate_router_arm_in_flight: what each model deployment is answering now."""
    gate = asyncio.Event()

    async def held(request: web.Request, body: bytes) -> web.StreamResponse:
        await gate.wait()
        return web.json_response({"predicted_label": 1})

    async with run_backend(Backend(reply=held)) as slow, run_backend() as fast:
        url, _ = await start_router(make_spec(name, [("slow", slow.url), ("fast", fast.url)]))

        async def call(arm: str) -> int:
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    f"{url}/endpoints/{name}/invocations",
                    json={"features": ["x"]},
                    headers={"x-amzn-sagemaker-target-variant": arm},
                ) as response,
            ):
                await response.read()
                return response.status

        calls = [asyncio.create_task(call("slow")) for _ in range(2)]
        assert await call("fast") == 200

        async def per_arm() -> dict[str, float]:
            async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as response:
                values = metric_values(await response.text(), "banditgate_router_arm_in_flight")
            return {dict(labels)["arm"]: v for labels, v in values.items()}

        async def two_slow() -> bool:
            return (await per_arm()).get("slow") == 2.0

        await wait_for(two_slow)
        assert (await per_arm())["fast"] == 0.0
        gate.set()
        assert await asyncio.gather(*calls) == [200, 200]
        assert (await per_arm())["slow"] == 0.0
