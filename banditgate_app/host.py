"""`banditgate serve`'s ASGI app: one port for the data plane, the reward webhook and the control plane.

The host owns the lifespan: it starts the router, then each component (reward
intake, control service), and stops them in reverse. A request goes to the router
first (plain ASGI, the hot path); what the router does not answer goes to one
FastAPI app that carries every other route.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import Any, Protocol

import orjson

from banditgate.ratelimit import RateLimit
from banditgate_app.workers_child import WorkersStatus, describe, read_status, render_metrics
from router.app import RouterApp

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Component(Protocol):
    async def startup(self) -> None: ...
    async def shutdown(self) -> None: ...


class HostApp:
    def __init__(
        self,
        router: RouterApp,
        api: ASGIApp,
        components: Sequence[Component] = (),
        *,
        workers_status: Callable[[], WorkersStatus | None] = read_status,
        rates: Mapping[str, float] | None = None,
    ) -> None:
        """`workers_status`: serve's background workers child, None when there is none;
        `rates`: rate limits by request class (banditgate/ratelimit.py)."""
        self.router = router
        self.api = api
        self.components = list(components)
        self.workers_status = workers_status
        self._http: ASGIApp = RateLimit(self._route, rates=rates) if rates else self._route

    async def startup(self) -> None:
        await self.router.startup()
        for component in self.components:
            await component.startup()

    async def shutdown(self) -> None:
        for component in reversed(self.components):
            try:
                await component.shutdown()
            except Exception:
                log.exception("component shutdown failed")
        await self.router.shutdown()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:
            await self.api(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        status = self.workers_status() if _reports_workers(scope) else None
        if status is not None:
            await self._with_workers(status, scope, receive, send)
        elif not await self.router.handle(scope, receive, send):
            await self.api(scope, receive, send)

    async def _with_workers(
        self, status: WorkersStatus, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Readiness and /metrics with the background workers child's state added."""
        response = _Captured()
        if not await self.router.handle(scope, receive, response.send):
            await self.api(scope, receive, response.send)
        body = response.body
        code = response.status
        if scope["path"] == "/metrics":
            if code == 200:
                body += render_metrics(status)
        else:
            try:
                document = orjson.loads(body)
            except orjson.JSONDecodeError:
                document = None
            if isinstance(document, dict):
                document["workers"] = describe(status)
                if status.crash_looping and code == 200:
                    code = 503
                    message = (
                        f"background workers keep dying (last exit code {status.last_exit_code})"
                    )
                    document = {
                        "error": {"type": "NotReady", "message": message},
                        "workers": document["workers"],
                    }
                body = orjson.dumps(document)
        headers = [(k, v) for k, v in response.headers if k.lower() != b"content-length"] + [
            (b"content-length", str(len(body)).encode())
        ]
        await send({"type": "http.response.start", "status": code, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _reports_workers(scope: Scope) -> bool:
    return scope["method"] == "GET" and scope["path"] in ("/health/ready", "/metrics")


class _Captured:
    """An ASGI response kept in memory (small ones: readiness and /metrics)."""

    def __init__(self) -> None:
        self.status = 500
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""

    async def send(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")
