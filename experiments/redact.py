"""Credentials in arm URLs never leave the control plane: its JSON answers are redacted."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from banditgate.arm_hosts import redact_urls

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_PREFIXES = ("/v1/experiments", "/dashboard")


class RedactCredentials:
    """ASGI middleware: JSON answers under the experiments API and dashboards, with every
    `user:password@` in an http(s) URL shown as `user:***@`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(_PREFIXES):
            await self.app(scope, receive, send)
            return
        start: list[Message] = []
        passthrough = False
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal passthrough
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                if not headers.get(b"content-type", b"").startswith(b"application/json"):
                    passthrough = True
                    await send(message)
                else:
                    start.append(message)
                return
            if passthrough or not start:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                await self._send_redacted(start[0], b"".join(chunks), send)

        await self.app(scope, receive, capture)

    @staticmethod
    async def _send_redacted(start: Message, body: bytes, send: Send) -> None:
        if b"@" in body:
            with contextlib.suppress(orjson.JSONDecodeError):
                body = orjson.dumps(redact_urls(orjson.loads(body)))
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})
