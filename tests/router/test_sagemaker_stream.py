"""InvokeEndpointWithResponseStream through the router, driven by boto3 against streaming arms."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from botocore.exceptions import EventStreamError

from tests.router.conftest import logged_decisions
from tests.router.test_sagemaker_errors import runtime_client
from tests.support import Backend, make_spec, run_backend, wait_for

TOKENS = [b"Hello", b", wor", b"ld", b"!"]


def streamer(first_read: asyncio.Event, *, break_after: int | None = None, stall: bool = False):  # type: ignore[no-untyped-def]
    """An arm that streams TOKENS chunked, holding the rest until the client has the first."""

    async def reply(request: web.Request, body: bytes) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(TOKENS[0])
        await first_read.wait()  # only a relay that does not buffer gets past this
        if stall:
            await asyncio.sleep(30)
        for index, token in enumerate(TOKENS[1:], start=1):
            if break_after is not None and index >= break_after:
                assert request.transport is not None
                request.transport.abort()
                return response
            await response.write(token)
        await response.write_eof()
        return response

    return reply


def read_stream(client: Any, name: str, on_first: Any) -> tuple[dict[str, Any], list[bytes]]:
    response = client.invoke_endpoint_with_response_stream(
        EndpointName=name, Body=b'{"inputs": "Hi"}', ContentType="application/json"
    )
    parts: list[bytes] = []
    for event in response["Body"]:
        parts.append(event["PayloadPart"]["Bytes"])
        if len(parts) == 1:
            on_first()
    return response, parts


async def stream_through(url: str, name: str, first_read: asyncio.Event) -> Any:
    loop = asyncio.get_running_loop()
    client = runtime_client(url)
    return await asyncio.to_thread(
        read_stream, client, name, lambda: loop.call_soon_threadsafe(first_read.set)
    )


async def test_tokens_are_relayed_as_payload_parts_as_they_come(start_router, redis, name):
    first_read = asyncio.Event()
    async with run_backend(Backend(reply=streamer(first_read))) as arm:
        url, _ = await start_router(make_spec(name, [("llm", arm.url)]))
        response, parts = await asyncio.wait_for(stream_through(url, name, first_read), 20)
    assert parts[0] == TOKENS[0]
    assert b"".join(parts) == b"".join(TOKENS)
    assert response["InvokedProductionVariant"] == "llm"
    assert response["ContentType"] == "text/plain; charset=utf-8"
    assert arm.requests[0]["path"] == "/invocations"
    await wait_for(lambda: _count(redis, name, 1))
    (decision,) = await logged_decisions(redis, name)
    assert decision["status"] == 200 and "error" not in decision
    assert 0 < decision["ttfb_ms"] <= decision["latency_ms"]
    headers = response["ResponseMetadata"]["HTTPHeaders"]
    assert decision["event_id"] == headers["x-banditgate-event-id"]


async def test_an_arm_that_breaks_mid_stream_is_a_model_stream_error(start_router, redis, name):
    first_read = asyncio.Event()
    async with run_backend(Backend(reply=streamer(first_read, break_after=2))) as arm:
        url, _ = await start_router(make_spec(name, [("llm", arm.url)]))
        with pytest.raises(EventStreamError) as caught:
            await asyncio.wait_for(stream_through(url, name, first_read), 20)
    error = caught.value.response["Error"]
    assert error["Code"] == "ModelStreamError"
    assert error["Message"].startswith("arm 'llm' broke the stream")
    await wait_for(lambda: _count(redis, name, 1))
    (decision,) = await logged_decisions(redis, name)
    assert decision["status"] == 502 and "broke the stream" in decision["error"]
    assert decision["ttfb_ms"] > 0


async def test_an_arm_that_goes_silent_is_a_timeout_in_the_stream(start_router, redis, name):
    first_read = asyncio.Event()
    async with run_backend(Backend(reply=streamer(first_read, stall=True))) as arm:
        url, _ = await start_router(make_spec(name, [("llm", arm.url)]), backend_timeout_s=0.5)
        with pytest.raises(EventStreamError) as caught:
            await asyncio.wait_for(stream_through(url, name, first_read), 20)
    assert caught.value.response["Error"]["Code"] == "ModelStreamError"
    assert "went silent" in caught.value.response["Error"]["Message"]
    await wait_for(lambda: _count(redis, name, 1))
    (decision,) = await logged_decisions(redis, name)
    assert decision["status"] == 504


async def test_a_failure_before_the_stream_is_a_model_error(start_router, redis, name):
    async def crash(request: web.Request, body: bytes) -> web.StreamResponse:
        return web.Response(status=500, text="model failed to load")

    async with run_backend(Backend(reply=crash)) as arm:
        url, _ = await start_router(make_spec(name, [("llm", arm.url)]))
        client = runtime_client(url)
        with pytest.raises(client.exceptions.ModelError) as caught:
            await asyncio.to_thread(
                client.invoke_endpoint_with_response_stream, EndpointName=name, Body=b"{}"
            )
        with pytest.raises(client.exceptions.ValidationError) as unknown:
            await asyncio.to_thread(
                client.invoke_endpoint_with_response_stream, EndpointName="nope", Body=b"{}"
            )
    assert caught.value.response["OriginalStatusCode"] == 500
    assert caught.value.response["OriginalMessage"] == "model failed to load"
    assert "Endpoint nope not found." in str(unknown.value)
    await wait_for(lambda: _count(redis, name, 1))
    (decision,) = await logged_decisions(redis, name)
    assert decision["status"] == 500


async def test_invoke_endpoint_async_is_a_clear_not_supported(start_router, name):
    async with run_backend() as arm:
        url, _ = await start_router(make_spec(name, [("a", arm.url)]))
        client = runtime_client(url)
        with pytest.raises(client.exceptions.ValidationError) as caught:
            await asyncio.to_thread(
                client.invoke_endpoint_async,
                EndpointName=name,
                InputLocation="s3://bucket/input.json",
            )
    assert "InvokeEndpointAsync is not supported" in str(caught.value)
    assert arm.requests == []


async def _count(redis, name, n):  # type: ignore[no-untyped-def]
    return len(await logged_decisions(redis, name)) >= n
