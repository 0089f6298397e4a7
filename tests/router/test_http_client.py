"""The forwarding client against real loopback servers, including misbehaving ones."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from router.http_client import ClientError, ClientTimeout, HttpClient, parse_target
from tests.support import Backend, run_backend

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[str]:
    """A TCP server that writes whatever bytes a test wants."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


def test_parse_target() -> None:
    target, path = parse_target("http://example.com/a/b?x=1")
    assert (target.host, target.port, target.host_header, path) == (
        "example.com",
        80,
        "example.com",
        "/a/b?x=1",
    )
    target, path = parse_target("https://[::1]:8443")
    assert (target.scheme, target.host, target.port, target.host_header, path) == (
        "https",
        "::1",
        8443,
        "[::1]:8443",
        "/",
    )
    with pytest.raises(ClientError):
        parse_target("ftp://x/y")


async def test_reuses_keep_alive_connections_and_passes_bodies_both_ways() -> None:
    seen: list[bytes] = []

    async def echo(request: web.Request, body: bytes) -> web.StreamResponse:
        seen.append(body)
        return web.Response(body=body[::-1], headers={"X-Echo": request.headers.get("X-Trace", "")})

    async with run_backend(Backend(reply=echo)) as backend:
        client = HttpClient()
        big = bytes(range(256)) * 40_000  # 10 MB, forces a split write
        for payload in (b"hello", big, b"again"):
            response = await client.request(
                "POST",
                f"{backend.url}/x",
                {"x-trace": "t1", "content-type": "application/octet-stream"},
                payload,
                timeout_s=10,
            )
            assert response.status == 200
            assert response.body == payload[::-1]
            assert (b"X-Echo", b"t1") in response.headers
        await client.close()
    assert seen[1] == big
    assert client.opened == 1


async def test_chunked_and_close_delimited_responses() -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        await writer.drain()
        await read_request(reader)
        writer.write(b"HTTP/1.0 201 Created\r\n\r\nuntil close")
        await writer.drain()
        writer.close()

    async with raw_server(chunked) as url:
        client = HttpClient()
        first = await client.request("POST", url, {}, b"", timeout_s=5)
        second = await client.request("POST", url, {}, b"", timeout_s=5)
        await client.close()
    assert (first.status, first.body, first.content_type) == (200, b"hello world", b"text/plain")
    assert (second.status, second.body) == (201, b"until close")


async def test_a_stale_pooled_connection_is_retried_once_on_a_fresh_one() -> None:
    connections = 0

    async def closes_after_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()  # advertises keep-alive, then hangs up: the pooled connection is dead

    async with raw_server(closes_after_one) as url:
        client = HttpClient()
        assert (await client.request("POST", url, {}, b"a", timeout_s=5)).body == b"ok"
        await asyncio.sleep(0.05)
        assert (await client.request("POST", url, {}, b"b", timeout_s=5)).body == b"ok"
        await client.close()
    assert connections == 2


async def test_errors_are_typed_and_the_process_survives() -> None:
    async def malformed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async def huge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000)
        await writer.drain()

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        writer.transport.abort()

    client = HttpClient(max_response_bytes=1000, connect_timeout_s=0.5)
    async with raw_server(malformed) as url:
        with pytest.raises(ClientError, match="malformed response"):
            await client.request("POST", url, {}, b"", timeout_s=5)
    async with raw_server(silent) as url:
        with pytest.raises(ClientTimeout):
            await client.request("POST", url, {}, b"", timeout_s=0.2)
    async with raw_server(huge) as url:
        with pytest.raises(ClientError, match="larger than 1000 bytes"):
            await client.request("POST", url, {}, b"", timeout_s=5)
    async with raw_server(reset) as url:
        with pytest.raises(ClientError, match="closed by the backend"):
            await client.request("POST", url, {}, b"", timeout_s=5)
    with pytest.raises(ClientError, match="cannot connect"):
        await client.request("POST", "http://127.0.0.1:1/", {}, b"", timeout_s=5)
    await client.close()


async def test_header_values_cannot_split_the_request_and_head_has_no_body() -> None:
    heads: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head, _ = await read_request(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            heads.append(head)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"
                + (b"" if head.startswith(b"HEAD") else b"abc")
            )
            await writer.drain()

    async with raw_server(record) as url:
        client = HttpClient()
        await client.request(
            "POST", url, {"x-ok": "1", "x-bad": "v\r\nInjected: yes"}, b"", timeout_s=5
        )
        head = await client.request("HEAD", url, {}, b"", timeout_s=5)
        await client.close()
    assert b"x-ok: 1" in heads[0] and b"Injected" not in heads[0]
    assert head.status == 200 and head.body == b""


async def test_the_connection_cap_queues_requests_instead_of_flooding_a_backend() -> None:
    active = 0
    peak = 0

    async def slow(request: web.Request, body: bytes) -> web.StreamResponse:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.05)
        active -= 1
        return web.Response(body=b"ok")

    async with run_backend(Backend(reply=slow)) as backend:
        client = HttpClient(max_connections_per_host=3)
        responses = await asyncio.gather(
            *(client.request("POST", f"{backend.url}/x", {}, b"", timeout_s=10) for _ in range(12))
        )
        with pytest.raises(ClientTimeout, match="no free connection"):
            await asyncio.gather(
                *(
                    client.request("POST", f"{backend.url}/x", {}, b"", timeout_s=0.08)
                    for _ in range(12)
                )
            )
        await client.close()
    assert [r.body for r in responses] == [b"ok"] * 12
    assert peak == 3 and client.opened <= 6


async def test_a_request_the_backend_may_have_processed_is_never_sent_again() -> None:
    processed: list[bytes] = []

    async def answers_once_then_resets(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        head, body = await read_request(reader)
        processed.append(head.split(b" ", 1)[0] + b" " + body)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        head, body = await read_request(reader)  # the kept-alive connection's second request
        processed.append(head.split(b" ", 1)[0] + b" " + body)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # processed, then reset before answering

    async with raw_server(answers_once_then_resets) as url:
        client = HttpClient()
        assert (await client.request("POST", url, {}, b"1", timeout_s=5)).body == b"ok"
        with pytest.raises(ClientError) as failed:
            await client.request("POST", url, {}, b"2", timeout_s=5)
        assert failed.value.sent
        assert (await client.request("GET", url, {}, b"", timeout_s=5)).body == b"ok"
        # An idempotent request on a reused connection may be sent once more, fresh.
        assert (await client.request("PUT", url, {}, b"3", timeout_s=5)).body == b"ok"
        await client.close()
    assert processed == [b"POST 1", b"POST 2", b"GET ", b"PUT 3", b"PUT 3"]


async def test_a_refused_connection_says_nothing_was_sent() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        client = HttpClient()
        with pytest.raises(ClientError) as failed:
            await client.request("POST", f"http://127.0.0.1:{port}", {}, b"x", timeout_s=5)
        assert not failed.value.sent
