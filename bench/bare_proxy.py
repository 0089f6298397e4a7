"""The cheapest useful proxies: raw ASGI, no decision, no logging.

`app` forwards with one aiohttp session (the reference the issue names);
`lean_app` forwards with the router's own client (router/http_client.py), so the
router's cost of deciding and logging can be read off against it.
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp

from router.http_client import HttpClient

UPSTREAM = os.environ.get("BARE_UPSTREAM", "http://127.0.0.1:9201") + "/invocations"


async def _read(receive: Any) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def _lifespan(receive: Any, send: Any, start: Any, stop: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            start()
            await send({"type": "lifespan.startup.complete"})
        else:
            await stop()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _respond(send: Any, status: int, data: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


_session: aiohttp.ClientSession | None = None


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _session
    if scope["type"] == "lifespan":

        def start() -> None:
            global _session
            _session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

        async def stop() -> None:
            assert _session is not None
            await _session.close()

        await _lifespan(receive, send, start, stop)
        return
    body = await _read(receive)
    assert _session is not None
    async with _session.post(
        UPSTREAM, data=body, headers={"content-type": "application/json"}
    ) as r:
        await _respond(send, r.status, await r.read())


_client = HttpClient()


async def lean_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send, lambda: None, _client.close)
        return
    body = await _read(receive)
    response = await _client.request(
        "POST", UPSTREAM, {"content-type": "application/json"}, body, timeout_s=60
    )
    await _respond(send, response.status, response.body)
