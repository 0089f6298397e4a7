"""The composition root: the one module that imports every component and runs them together."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import uvicorn

from banditgate.redis import EmbeddedRedis, connect, resolve_redis_url
from banditgate.settings import CoreSettings
from banditgate.spec import ExperimentSpec
from banditgate.store import ExperimentStore

log = logging.getLogger(__name__)


def configure_logging(level: str | None = None) -> None:
    logging.basicConfig(
        level=(level or os.environ.get("BANDITGATE_LOG_LEVEL", "INFO")).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


async def apply_specs(url: str, specs: Sequence[ExperimentSpec], reason: str = "serve -f") -> None:
    redis = connect(url)
    try:
        store = ExperimentStore(redis)
        for spec in specs:
            entry = await store.put(spec, reason=reason)
            if entry.get("unchanged"):
                log.info("experiment %s unchanged (spec version %s)", spec.name, entry["version"])
            else:
                log.info("experiment %s applied (spec version %s)", spec.name, entry["version"])
    finally:
        await redis.aclose()


def create_serve_app(
    *, redis: Any = None, with_ingest: bool = True, with_control: bool = True
) -> Any:
    """Router, reward webhook and control plane on one port (the uvicorn worker's app).

    The data plane is plain ASGI; every other route lives in one FastAPI app that
    the router falls back to. Each package contributes `build(settings, redis=) ->
    (APIRouter, component)`; the component has `startup()` and `shutdown()` and is
    reachable from its routes as `request.app.state.<ingest|control>`.
    """
    from fastapi import FastAPI

    from banditgate.http import install_error_handlers
    from router.app import create_app as create_router
    from router.settings import RouterSettings

    fallback = FastAPI(title="banditgate", version=_version())
    install_error_handlers(fallback)
    components: list[Any] = []
    if with_ingest:
        from reward_ingest.app import build as build_ingest
        from reward_ingest.settings import IngestSettings

        routes, component = build_ingest(IngestSettings(), redis=redis)
        fallback.include_router(routes)
        fallback.state.ingest = component
        components.append(component)
    if with_control:
        from experiments.app import build as build_control
        from experiments.settings import ControlSettings

        control_routes, control = build_control(ControlSettings(), redis=redis)
        fallback.include_router(control_routes)
        fallback.state.control = control
        components.append(control)
    return create_router(RouterSettings(), redis=redis, fallback=fallback, components=components)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("banditgate")
    except PackageNotFoundError:
        return "0"


def spawn_background() -> subprocess.Popen[bytes]:
    """`banditgate workers` as a child process, on the same Redis (the URL is in the environment)."""
    return subprocess.Popen(
        [sys.executable, "-m", "banditgate.cli", "workers"], env=os.environ.copy()
    )


def exit_on_sigterm() -> None:
    """Make SIGTERM unwind the stack (SystemExit), so `finally` blocks stop what we started.

    uvicorn handles SIGTERM itself, shuts down gracefully, restores the previous
    handler and raises the signal again; with the default handler that kills the
    process before cleanup runs. With this one, the re-raised signal exits cleanly.
    """

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, handler)


def serve(
    specs: Sequence[ExperimentSpec],
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    workers: int = 1,
    background: bool = True,
    settings: CoreSettings | None = None,
) -> None:
    settings = settings or CoreSettings()
    exit_on_sigterm()
    url, embedded = resolve_redis_url(settings)
    helper: subprocess.Popen[bytes] | None = None
    try:
        asyncio.run(apply_specs(url, specs))
        if background:
            helper = spawn_background()
        uvicorn.run(
            "banditgate.serve:create_serve_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            loop="uvloop",
            http="httptools",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=15,
        )
    finally:
        stop_process(helper)
        close_embedded(embedded)


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 20.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def close_embedded(embedded: EmbeddedRedis | None) -> None:
    if embedded is not None:
        embedded.close()
