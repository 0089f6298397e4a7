"""The control plane's HTTP surface: experiments API, rollouts, stats, dashboards, metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from banditgate.http import document_models, health_routes, install_error_handlers
from banditgate.redis import Redis
from experiments import (
    api,
    dashboard,
    export_api,
    metrics,
    monitor_api,
    personalizer_api,
    rollout_api,
    sagemaker_api,
    segments,
)
from experiments.service import ControlService
from experiments.settings import ControlSettings


def build(
    settings: ControlSettings, *, redis: Redis | None = None
) -> tuple[APIRouter, ControlService]:
    """Routes plus the component that owns their state (`app.state.control`)."""
    service = ControlService(settings, redis=redis)
    router = APIRouter()
    for module in (
        api,
        rollout_api,
        export_api,
        dashboard,
        metrics,
        segments,
        monitor_api,
        personalizer_api,
        sagemaker_api,
    ):
        router.include_router(module.routes())
    return router, service


def document(app: FastAPI) -> None:
    """Put the spec's JSON Schema in the app's OpenAPI (the spec routes refer to it)."""
    document_models(app, *api.SCHEMAS)


def create_control_app(
    settings: ControlSettings | None = None, *, redis: Redis | None = None
) -> FastAPI:
    """The control plane alone (`banditgate control`), with its own health routes."""
    routes, service = build(settings or ControlSettings(), redis=redis)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.startup()
        try:
            yield
        finally:
            await service.shutdown()

    # Routes return typed dicts: FastAPI serialises them with pydantic (JSONResponse is
    # deprecated there), which also turns NaN into null.
    app = FastAPI(title="banditgate control plane", lifespan=lifespan)
    app.state.control = service
    install_error_handlers(app)
    app.include_router(routes)
    app.include_router(health_routes(service))
    document(app)
    return app
