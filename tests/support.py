"""Test helpers: loopback backends and servers that run in the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import uvicorn
from aiohttp import web

from banditgate.spec import ExperimentSpec, parse_spec

ADMIN_KEY = "test-admin-key"


@dataclass
class Control:
    """A control plane served on loopback (the `control` fixture), and a client for it."""

    url: str
    http: aiohttp.ClientSession
    app: Any

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = ADMIN_KEY,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, Any]:
        sent = dict(headers or {})
        if key is not None:
            sent["authorization"] = f"Bearer {key}"
        data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
        if data is not None:
            sent.setdefault("content-type", "application/json")
        async with self.http.request(method, self.url + path, data=data, headers=sent) as response:
            text = await response.read()
            content_type = response.headers.get("content-type", "")
            parsed = orjson.loads(text) if text and "json" in content_type else text.decode()
            return response.status, parsed

    async def get(self, path: str, *, key: str | None = ADMIN_KEY) -> Any:
        """GET (admin keys read too); the status must be 200."""
        status, body = await self.call("GET", path, key=key)
        assert status == 200, body
        return body


@dataclass
class Backend:
    """A loopback model server whose behaviour a test can change while it runs."""

    label: int = 3
    status: int = 200
    delay_s: float = 0.0
    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    reply: Callable[[web.Request, bytes], Awaitable[web.StreamResponse]] | None = None
    runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            {
                "path": request.path,
                "query": request.query_string,
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "body": body,
                "method": request.method,
            }
        )
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.reply is not None:
            return await self.reply(request, body)
        headers = {}
        custom = request.headers.get("X-Amzn-SageMaker-Custom-Attributes")
        if custom is not None:
            headers["X-Amzn-SageMaker-Custom-Attributes"] = f"echo:{custom}"
        if request.path.startswith("/v2/models/"):
            payload = {
                "model_name": request.path.split("/")[3],
                "outputs": [
                    {"name": "label", "shape": [1], "datatype": "INT64", "data": [self.label]}
                ],
            }
        else:
            payload = {"predicted_label": self.label, "path": request.path}
        return web.Response(
            status=self.status,
            body=orjson.dumps(payload),
            content_type="application/json",
            headers=headers,
        )


@contextlib.asynccontextmanager
async def run_backend(backend: Backend | None = None) -> AsyncIterator[Backend]:
    backend = backend or Backend()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", backend.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    backend.url = f"http://127.0.0.1:{port}"
    backend.runner = runner
    try:
        yield backend
    finally:
        await runner.cleanup()


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.asynccontextmanager
async def serve_asgi(app: Any) -> AsyncIterator[str]:
    """Run an ASGI app under a real uvicorn server on loopback; yields its base URL."""
    sock = free_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, lifespan="on", log_level="warning", access_log=False, loop="none", http="httptools"
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("server exited before starting")
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()


def make_spec(name: str, arms: list[tuple[str, str]], **overrides: Any) -> ExperimentSpec:
    doc: dict[str, Any] = {
        "name": name,
        "arms": [{"name": arm, "url": url, "protocol": "sagemaker"} for arm, url in arms],
        "context": {"text": "features[0]", "headers": ["x-segment"]},
    }
    doc.update(overrides)
    return parse_spec(doc)


async def wait_for(
    predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0, every: float = 0.02
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if await predicate():
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(every)
