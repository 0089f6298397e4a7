"""HTTP pieces every FastAPI surface shares: error rendering, bearer-key checks, health routes."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, SecretStr

from banditgate.errors import (
    BanditgateError,
    Forbidden,
    NotReady,
    Unauthorized,
    retry_after_headers,
)
from banditgate.redis import Redis


def install_error_handlers(app: FastAPI) -> None:
    """One shape for every error: {"error": {"type", "message", "field"?}}."""

    async def banditgate_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, BanditgateError)
        return JSONResponse(exc.to_dict(), status_code=exc.status, headers=retry_after_headers(exc))

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = []
        for error in exc.errors():
            loc = [str(part) for part in error.get("loc", ()) if part != "body"]
            problems.append({"field": ".".join(loc) or "body", "reason": error.get("msg", "")})
        first = problems[0] if problems else {"field": "body", "reason": "invalid"}
        body = {
            "error": {
                "type": "InvalidInput",
                "message": "; ".join(f"{p['field']}: {p['reason']}" for p in problems),
                "field": first["field"],
                "problems": problems,
            }
        }
        return JSONResponse(body, status_code=422)

    app.add_exception_handler(BanditgateError, banditgate_error)
    app.add_exception_handler(RequestValidationError, validation_error)


def document_models(app: FastAPI, *models: type[BaseModel]) -> None:
    """Add each model's JSON Schema (and the models it uses) to `components/schemas` of the
    app's OpenAPI, for routes that parse their body themselves (to keep their own error
    messages) and name it with `{"$ref": "#/components/schemas/<Model>"}`."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in models:
            generated = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, definition in {
                **generated.pop("$defs", {}),
                model.__name__: generated,
            }.items():
                if components.setdefault(name, definition) != definition:
                    raise ValueError(f"two OpenAPI schemas are named {name}")
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def load_keys(keys: Iterable[SecretStr], keys_file: Path | None) -> list[bytes]:
    found = [key.get_secret_value().encode() for key in keys if key.get_secret_value()]
    if keys_file is not None:
        for line in keys_file.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                found.append(line.encode())
    return found


class BearerKeys:
    """Checks `Authorization: Bearer <key>` in constant time; no keys configured means open."""

    def __init__(self, keys: list[bytes], realm: str) -> None:
        self.keys = keys
        self.realm = realm

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def check(self, authorization: str | None, *, forbidden_on_wrong: bool = True) -> None:
        if not self.keys:
            return
        if not authorization:
            raise Unauthorized(f"{self.realm}: missing Authorization: Bearer <key>")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized(f"{self.realm}: Authorization must be 'Bearer <key>'")
        presented = token.strip().encode()
        matched = False
        for key in self.keys:
            matched |= hmac.compare_digest(presented, key)
        if not matched:
            if forbidden_on_wrong:
                raise Forbidden(f"{self.realm}: the key is not valid")
            raise Unauthorized(f"{self.realm}: the key is not valid")


class Started(Protocol):
    """A component with a lifespan: `started` once its startup ran, and its Redis client."""

    @property
    def started(self) -> bool: ...

    @property
    def redis(self) -> Redis: ...


def health_routes(component: Started, *, redis_timeout_s: float = 1.0) -> APIRouter:
    """`/health/live` (the process answers) and `/health/ready` (started, Redis answers; else 503)."""
    router = APIRouter(tags=["health"])

    @router.get("/health/live")
    async def live() -> dict[str, Any]:
        return {"status": "live"}

    @router.get("/health/ready")
    async def ready() -> dict[str, Any]:
        if not component.started:
            raise NotReady("not started")
        try:
            await asyncio.wait_for(component.redis.ping(), timeout=redis_timeout_s)
        except Exception as exc:
            raise NotReady(f"redis unreachable: {exc or type(exc).__name__}") from None
        return {"status": "ready"}

    return router
