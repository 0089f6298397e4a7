"""HTTP pieces every FastAPI surface shares: error rendering, bearer-key checks, health routes."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
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
        headers = retry_after_headers(exc)
        if exc.status == 401:  # Basic first: a browser then asks for the key (dashboards)
            headers["www-authenticate"] = 'Basic realm="banditgate", Bearer realm="banditgate"'
        return JSONResponse(exc.to_dict(), status_code=exc.status, headers=headers)

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


_SCOPE = re.compile(r"^[a-z0-9*?\[\]-]+(\+[a-z0-9*?\[\]-]+)*$")


@dataclass(frozen=True)
class Grant:
    """What a key may touch: experiments matching `scope` (glob patterns), or all (None)."""

    scope: tuple[str, ...] | None = None

    def allows(self, experiment: str) -> bool:
        return self.scope is None or any(fnmatchcase(experiment, p) for p in self.scope)


EVERYTHING = Grant()


def parse_key(raw: bytes) -> tuple[bytes, Grant]:
    """`secret` or `secret@pattern+pattern`: a key limited to the experiments it names."""
    secret, at, scope = raw.rpartition(b"@")
    text = scope.decode("ascii", errors="replace")
    if not at or not secret or not _SCOPE.match(text):
        return raw, EVERYTHING
    return secret, Grant(tuple(text.split("+")))


class BearerKeys:
    """Checks `Authorization: Bearer <key>` (or HTTP Basic with the key as the password, for
    browsers) in constant time; no keys configured means open. `check` returns the key's
    grant."""

    def __init__(self, keys: list[bytes], realm: str) -> None:
        self.keys = keys
        self.realm = realm
        self._entries = [parse_key(key) for key in keys]

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def check(self, authorization: str | None, *, forbidden_on_wrong: bool = True) -> Grant:
        if not self.keys:
            return EVERYTHING
        if not authorization:
            raise Unauthorized(f"{self.realm}: missing Authorization: Bearer <key>")
        scheme, _, token = authorization.partition(" ")
        presented = _token(scheme.lower(), token.strip())
        if presented is None:
            raise Unauthorized(f"{self.realm}: Authorization must be 'Bearer <key>'")
        presented, _ = parse_key(presented)
        grant: Grant | None = None
        for secret, scope in self._entries:  # every key, whichever matches: constant time
            if hmac.compare_digest(presented, secret) and grant is None:
                grant = scope
        if grant is None:
            if forbidden_on_wrong:
                raise Forbidden(f"{self.realm}: the key is not valid")
            raise Unauthorized(f"{self.realm}: the key is not valid")
        return grant


def _token(scheme: str, token: str) -> bytes | None:
    if not token:
        return None
    if scheme == "bearer":
        return token.encode()
    if scheme == "basic":
        try:
            decoded = base64.b64decode(token, validate=True)
        except (binascii.Error, ValueError):
            return None
        _, colon, password = decoded.partition(b":")
        return password if colon and password else None
    return None


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
