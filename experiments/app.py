"""The control plane's HTTP surface: experiments API, rollouts, stats, dashboards, metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from pydantic import BaseModel, ConfigDict, Field

from banditgate.body_limit import BodyLimit
from banditgate.http import document_models, health_routes, install_error_handlers
from banditgate.ratelimit import RateLimit
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
from experiments.redact import RedactCredentials
from experiments.service import ControlService, authorize
from experiments.settings import ControlSettings


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str = Field(description="The error's kind (InvalidSpec, UnknownExperiment, ...).")
    message: str = Field(description="What is wrong, naming the field.")
    field: str | None = Field(default=None, description="Where in the request.")


class ErrorBody(BaseModel):
    """Every error answer: {"error": {"type", "message", "field"?}}."""

    model_config = ConfigDict(extra="allow")

    error: ErrorDetail


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        400: "Malformed request (JSON, YAML over its limits).",
        401: "No key, or not a bearer key.",
        403: "A key that is not valid here.",
        404: "No such experiment (or version).",
        409: "Conflict with the current state.",
        412: "If-Match names another spec version.",
        413: "Body over the limit.",
        422: "Invalid input, naming the field.",
        429: "Rate limited; see Retry-After.",
        503: "Redis unavailable; see Retry-After.",
    }.items()
}


def build(
    settings: ControlSettings, *, redis: Redis | None = None
) -> tuple[APIRouter, ControlService]:
    """Routes plus the component that owns their state (`app.state.control`)."""
    service = ControlService(settings, redis=redis)
    router = APIRouter()
    # The SageMaker control-plane API checks its own signatures (SigV4, an admin key as
    # the secret), and the Personalizer-compatible API its own keys (Bearer or
    # Ocp-Apim-Subscription-Key, errors in Personalizer's shape): neither is behind the
    # bearer-key dependency.
    router.include_router(sagemaker_api.routes())
    router.include_router(personalizer_api.routes())
    keyed = APIRouter(dependencies=[Depends(authorize)], responses=_ERRORS)
    for module in (api, rollout_api, export_api, dashboard, metrics, segments, monitor_api):
        keyed.include_router(module.routes())
    router.include_router(keyed)
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
    app.add_middleware(RedactCredentials)
    app.add_middleware(BodyLimit, limit=service.settings.max_body_bytes)
    app.add_middleware(RateLimit, rates=service.settings.rate_limits())
    install_error_handlers(app)
    app.include_router(routes)
    app.include_router(health_routes(service))
    document(app)
    return app
