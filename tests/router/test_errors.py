"""Bad input gets a clear error, and no error loses a queued decision or crashes the worker."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import orjson
from aiohttp import web

from tests.router.conftest import logged_decisions
from tests.support import Backend, make_spec, run_backend, wait_for


def closed_port_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


async def post(http, url, body=b'{"features": ["fine"]}', **headers):  # type: ignore[no-untyped-def]
    async with http.post(
        url, data=body, headers={"Content-Type": "application/json", **headers}
    ) as r:
        return r.status, await r.read(), r.headers.copy()


async def test_every_bad_input_answers_clearly_and_nothing_queued_is_lost(
    start_router, redis, name
):
    slow = Backend(delay_s=2.0)
    async with run_backend() as good, run_backend(slow), run_backend(Backend(status=503)) as broken:
        spec = make_spec(
            name,
            [
                ("good", good.url),
                ("slow", slow.url),
                ("down", closed_port_url()),
                ("broken", broken.url),
            ],
        )
        url, app = await start_router(spec, max_body_bytes=1024, backend_timeout_s=0.3)
        invoke = f"{url}/proxy/{name}/invocations"  # our own error shape; SageMaker's: test_sagemaker_errors.py
        async with aiohttp.ClientSession() as http:
            ok = await post(http, invoke, **{"X-Amzn-SageMaker-Target-Variant": "good"})
            assert ok[0] == 200

            status, body, _ = await post(http, f"{url}/proxy/nope/invocations")
            assert status == 404
            assert orjson.loads(body) == {
                "error": {"type": "UnknownExperiment", "message": "no experiment named 'nope'"}
            }

            status, body, _ = await post(http, invoke, b'{"features": [')
            assert status == 400
            error = orjson.loads(body)["error"]
            assert error["type"] == "MalformedJSON" and "not valid JSON" in error["message"]

            status, body, _ = await post(http, invoke, b'{"features": ["' + b"x" * 2000 + b'"]}')
            assert status == 413
            assert orjson.loads(body)["error"]["type"] == "PayloadTooLarge"

            status, body, _ = await post(
                http, invoke, **{"X-Amzn-SageMaker-Target-Variant": "ghost"}
            )
            assert status == 400
            assert orjson.loads(body)["error"]["type"] == "UnknownVariant"

            status, body, headers = await post(
                http, invoke, **{"X-Amzn-SageMaker-Target-Variant": "slow"}
            )
            assert status == 504
            assert orjson.loads(body)["error"]["type"] == "BackendTimeout"
            assert headers["X-Banditgate-Variant"] == "slow"
            timeout_event = headers["X-Banditgate-Event-Id"]

            status, body, headers = await post(
                http, invoke, **{"X-Amzn-SageMaker-Target-Variant": "down"}
            )
            assert status == 502
            assert orjson.loads(body)["error"]["type"] == "BackendError"
            refused_event = headers["X-Banditgate-Event-Id"]

            status, body, headers = await post(
                http, invoke, **{"X-Amzn-SageMaker-Target-Variant": "broken"}
            )
            assert status == 503
            assert orjson.loads(body) == {"predicted_label": 3, "path": "/invocations"}
            broken_event = headers["X-Banditgate-Event-Id"]

            status, _, _ = await post(http, invoke, **{"X-Banditgate-Event-Id": "x" * 300})
            assert status == 400

            # The worker survived all of it.
            again = await post(http, invoke, **{"X-Amzn-SageMaker-Target-Variant": "good"})
            assert again[0] == 200

    await wait_for(lambda: _count_at_least(redis, name, 5))
    decisions = {d["event_id"]: d for d in await logged_decisions(redis, name)}
    # Rejected before routing: no decision. Routed, whatever the outcome: one decision each.
    assert len(decisions) == 5
    assert (
        decisions[timeout_event]["status"] == 504
        and "did not answer" in decisions[timeout_event]["error"]
    )
    assert decisions[refused_event]["status"] == 502
    assert decisions[broken_event]["status"] == 503 and "error" not in decisions[broken_event]
    assert app.log is not None and app.log.stats.dropped == 0


async def test_queued_decisions_survive_a_redis_outage(start_router, redis, name):
    from banditgate.redis import connect

    async with run_backend() as good:
        url, app = await start_router(make_spec(name, [("good", good.url)]))
        log = app.log
        assert log is not None
        healthy = log.redis
        log.redis = connect("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)  # nothing listens
        try:
            async with aiohttp.ClientSession() as http:
                statuses = await asyncio.gather(
                    *(post(http, f"{url}/endpoints/{name}/invocations") for _ in range(20))
                )
            assert [s[0] for s in statuses] == [200] * 20
            await wait_for(lambda: _flush_failed(log))
            assert log.pending == 20
        finally:
            await log.redis.aclose()
            log.redis = healthy
        await wait_for(lambda: _count_at_least(redis, name, 20))
    assert len(await logged_decisions(redis, name)) == 20
    assert log.stats.dropped == 0


async def _flush_failed(log) -> bool:  # type: ignore[no-untyped-def]
    return log.stats.flush_errors > 0


async def test_backend_reset_is_502(start_router, redis, name):
    async def reset(request: web.Request, body: bytes) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.abort()
        return web.Response()

    async with run_backend(Backend(reply=reset)) as backend:
        url, _ = await start_router(make_spec(name, [("a", backend.url)]))
        async with aiohttp.ClientSession() as http:
            status, body, _ = await post(http, f"{url}/proxy/{name}/invocations")
    assert status == 502
    assert orjson.loads(body)["error"]["type"] == "BackendError"
    await wait_for(lambda: _count_at_least(redis, name, 1))


async def _count_at_least(redis, name, n):  # type: ignore[no-untyped-def]
    return len(await logged_decisions(redis, name)) >= n
