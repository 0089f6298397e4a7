"""`banditgate serve`'s ASGI app: one port for the data plane, the reward webhook and the control plane.

The host owns the lifespan: it starts the router, then each component (reward
intake, control service), and stops them in reverse. A request goes to the router
first (plain ASGI, the hot path); what the router does not answer goes to one
FastAPI app that carries every other route.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any, Protocol

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
        self, router: RouterApp, api: ASGIApp, components: Sequence[Component] = ()
    ) -> None:
        self.router = router
        self.api = api
        self.components = list(components)

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
            if not await self.router.handle(scope, receive, send):
                await self.api(scope, receive, send)
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
