"""The ASGI app factories the commands hand to uvicorn: each wires settings to components."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI

from banditgate.http import install_error_handlers
from banditgate.metrics import ProcessMetrics
from banditgate.redis import Redis
from banditgate_app.host import Component, HostApp
from experiments.app import build as build_control
from experiments.app import create_control_app, document
from experiments.settings import ControlSettings
from reward_ingest.app import build as build_ingest
from reward_ingest.app import create_ingest_app
from reward_ingest.personalizer import routes as personalizer_reward_routes
from reward_ingest.settings import IngestSettings
from router.app import RouterApp
from router.app import create_app as create_router_app
from router.settings import RouterSettings


def serve_app(
    *, redis: Redis | None = None, with_ingest: bool = True, with_control: bool = True
) -> HostApp:
    """Router, reward webhook and control plane on one port (`banditgate serve`)."""
    api = FastAPI(title="banditgate", version=_version())
    install_error_handlers(api)
    # The router counts in this process; the control plane's /metrics serves them too.
    metrics = ProcessMetrics()
    api.state.process_metrics = metrics
    components: list[Component] = []
    if with_ingest:
        routes, ingest = build_ingest(IngestSettings(), redis=redis, metrics=metrics)
        api.include_router(routes)
        api.include_router(personalizer_reward_routes())
        api.state.ingest = ingest
        components.append(ingest)
    if with_control:
        control_routes, control = build_control(ControlSettings(), redis=redis)
        api.include_router(control_routes)
        document(api)
        api.state.control = control
        components.append(control)
    router = create_router_app(RouterSettings(), redis=redis, metrics=metrics)
    return HostApp(router, api, components)


def router_app() -> RouterApp:
    """`banditgate router`."""
    return create_router_app(RouterSettings())


def ingest_app() -> FastAPI:
    """`banditgate ingest`."""
    return create_ingest_app(IngestSettings())


def control_app() -> FastAPI:
    """`banditgate control`."""
    return create_control_app(ControlSettings())


def _version() -> str:
    try:
        return version("banditgate")
    except PackageNotFoundError:
        return "0"
