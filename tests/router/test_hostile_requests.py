"""What a hostile or careless client sends the data plane: odd paths, odd event ids."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import orjson
import uvicorn

from banditgate.http_protocol import GuardedHttpToolsProtocol
from banditgate.spec import parse_spec
from tests.router.conftest import logged_decisions
from tests.router.test_http_client import raw_server, read_request
from tests.support import free_socket


async def send_raw(url: str, request: bytes) -> tuple[int, bytes]:
    """One request with exactly these bytes (no client library normalises the path)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length)
    writer.close()
    return int(head.split(b" ", 2)[1]), body


def post(target: bytes, *headers: bytes, body: bytes = b"{}") -> bytes:
    lines = [b"POST " + target + b" HTTP/1.1", b"host: x", b"content-type: application/json"]
    lines += [*headers, b"content-length: " + str(len(body)).encode(), b"", b""]
    return b"\r\n".join(lines) + body


async def test_proxy_paths_go_raw_and_cannot_leave_the_arms_base_path(start_router, name):
    seen: list[bytes] = []

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head, _ = await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            seen.append(head.split(b" ")[1])
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()

    async with raw_server(backend) as arm:
        spec = parse_spec(
            {"name": name, "arms": [{"name": "a", "url": f"{arm}/base", "protocol": "http"}]}
        )
        url, _ = await start_router(spec)
        proxy = f"/proxy/{name}".encode()
        for target in (
            b"/a%3Fb%23c%20d?x=1&y=%26",  # encoded ? # and space stay in the path
            b"/caf%C3%A9/%E6%97%A5",  # encoded UTF-8 stays encoded
            b"/plain/path",
        ):
            status, _ = await send_raw(url, post(proxy + target))
            assert status == 200
        # Raw UTF-8 in the request line: the server refuses it before any route runs.
        status, _ = await send_raw(url, post(proxy + b"/caf\xc3\xa9"))
        assert status == 400
        for target in (b"/..", b"/%2e%2e/secret", b"/a/%2E./b", b"/a%2Fb", b"/a%5c..%5cb"):
            status, body = await send_raw(url, post(proxy + target))
            assert status == 400, target
            assert orjson.loads(body)["error"]["field"] == "path"
    assert seen == [
        b"/base/a%3Fb%23c%20d?x=1&y=%26",
        b"/base/caf%C3%A9/%E6%97%A5",
        b"/base/plain/path",
    ]


async def test_non_ascii_event_ids_are_refused_and_ascii_ones_round_trip(start_router, redis, name):
    spec = parse_spec({"name": name, "arms": [{"name": "a", "url": "http://127.0.0.1:9"}]})
    url, app = await start_router(spec)
    rank = f"/v1/experiments/{name}/rank".encode()
    status, body = await send_raw(url, post(rank, body=orjson.dumps({"event_id": "café-1"})))
    assert status == 400 and orjson.loads(body)["error"]["field"] == "event_id"
    status, body = await send_raw(url, post(rank, body=orjson.dumps({"event_id": "日本-1"})))
    assert status == 400
    invoke = f"/proxy/{name}/x".encode()
    status, body = await send_raw(url, post(invoke, b"x-banditgate-event-id: caf\xc3\xa9-1"))
    assert status == 400
    assert orjson.loads(body)["error"]["field"] == "X-Banditgate-Event-Id"
    status, body = await send_raw(url, post(rank, body=orjson.dumps({"event_id": "cafe-1"})))
    assert status == 200 and orjson.loads(body)["event_id"] == "cafe-1"
    assert app.log is not None
    await app.log.stop()
    assert [d["event_id"] for d in await logged_decisions(redis, name)] == ["cafe-1"]


class QuickHeaders(GuardedHttpToolsProtocol):
    header_timeout_s = 0.3


async def test_idle_and_slowloris_connections_are_closed(start_router, name):
    spec = parse_spec({"name": name, "arms": [{"name": "a", "url": "http://127.0.0.1:9"}]})
    _, app = await start_router(spec)
    config = uvicorn.Config(
        app, lifespan="off", log_level="warning", loop="none", http=QuickHeaders
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    sock = free_socket()
    task = asyncio.create_task(server.serve(sockets=[sock]))
    port = sock.getsockname()[1]
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        slow_reader, slow_writer = await asyncio.open_connection("127.0.0.1", port)
        for byte in b"GET /health/live HTTP/1.1\r\nhost: x\r\n":
            slow_writer.write(bytes([byte]))
            await asyncio.sleep(0.01)
            if slow_reader.at_eof():
                break
        # Both are closed by the server: reads end, with nothing answered.
        assert await asyncio.wait_for(idle_reader.read(), 5) == b""
        assert await asyncio.wait_for(slow_reader.read(), 5) == b""
        status, _ = await send_raw(
            f"http://127.0.0.1:{port}",
            b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n",
        )
        assert status == 200  # a prompt client is served
        idle_writer.close()
        slow_writer.close()
    finally:
        server.should_exit = True
        await task
        sock.close()
