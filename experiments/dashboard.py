"""Dashboards: GET /dashboard lists experiments, /dashboard/{name} shows one, refreshing itself.

Helper paths start with "_" (/dashboard/_data, /dashboard/_static/...): experiment
names start with [a-z0-9], so they can never collide.

The pages are static HTML + JS under experiments/static (uPlot 1.6.32 vendored,
MIT), so they render with no network beyond this server. Each page polls one
JSON endpoint that bundles what it draws, so every refresh is one consistent
snapshot: the same numbers GET /v1/experiments/{name}/stats and /timeseries
return, plus the rollout state, spec versions and policy history.
"""

from __future__ import annotations

import html
import logging
from importlib import resources
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request, Response

from experiments.api import MAX_WINDOW_S, experiment_stats, experiment_timeseries
from experiments.lifecycle import Lifecycle
from experiments.service import Service

log = logging.getLogger(__name__)

STATIC_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".LICENSE": "text/plain; charset=utf-8",
}
STATIC_FILES = frozenset(
    {
        "uPlot.iife.min.js",
        "uPlot.min.css",
        "uPlot.LICENSE",
        "dashboard.js",
        "dashboard.css",
        "list.js",
    }
)
HISTORY_SHOWN = 20


def _static(name: str) -> bytes:
    return resources.files("experiments").joinpath("static", name).read_bytes()


def _page(template: str, **values: str) -> Response:
    text = _static(template).decode()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", html.escape(value, quote=True))
    return Response(
        text, media_type="text/html; charset=utf-8", headers={"cache-control": "no-store"}
    )


async def asgi_get(app: Any, path: str, authorization: str | None = None) -> tuple[int, Any]:
    """GET a route of this same app in-process (no socket); used for the rollout state.

    The rollout API is another module's contract (GET .../rollout -> phase, weights,
    history); calling it through the app keeps this page independent of its internals,
    and a 404 (no rollout, or no rollout API installed) simply shows no rollout.
    """
    status = 500
    chunks: list[bytes] = []
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"internal"), (b"accept", b"application/json")]
        + ([(b"authorization", authorization.encode("latin-1"))] if authorization else []),
        "client": ("127.0.0.1", 0),
        "server": ("internal", 80),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    body = b"".join(chunks)
    try:
        return status, orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return status, None


async def rollout_state(request: Request, name: str) -> dict[str, Any] | None:
    try:
        status, body = await asgi_get(
            request.app,
            f"/v1/experiments/{name}/rollout",
            request.headers.get("authorization"),
        )
    except Exception:
        log.warning("rollout state of %s unavailable", name, exc_info=True)
        return None
    return body if status == 200 and isinstance(body, dict) else None


def routes() -> APIRouter:
    router = APIRouter(tags=["dashboard"])

    @router.get("/dashboard", include_in_schema=False)
    async def listing() -> Response:
        return _page("list.html")

    @router.get("/dashboard/_data")
    async def listing_data(
        service: Service,
        window_s: Annotated[float, Query(gt=0, le=MAX_WINDOW_S)] = 3600.0,
    ) -> dict[str, Any]:
        """Every experiment with its status and headline numbers over `window_s`."""
        ops = Lifecycle(service.redis, service.stats)
        rows = []
        for summary in await ops.summaries():
            stats = await experiment_stats(service, summary["name"], window_s=window_s)
            rows.append(
                {
                    **summary,
                    "decisions": stats["totals"]["decisions"],
                    "joined": stats["totals"]["joined"],
                    "mean_reward": stats["totals"]["mean_reward"],
                    "errors": stats["totals"]["errors"],
                    "srm_flagged": bool(stats["srm"].get("flagged")),
                    "srm_p_value": stats["srm"].get("p_value"),
                    "last_decision_ms": stats["totals"]["last_decision_ms"],
                }
            )
        return {"window_s": window_s, "experiments": rows}

    @router.get("/dashboard/_static/{filename}", include_in_schema=False)
    async def static(filename: str) -> Response:
        if filename not in STATIC_FILES:
            return Response(status_code=404)
        suffix = filename[filename.rfind(".") :]
        return Response(
            _static(filename),
            media_type=STATIC_TYPES[suffix],
            headers={"cache-control": "public, max-age=300"},
        )

    @router.get("/dashboard/{name}", include_in_schema=False)
    async def experiment_page(name: str, service: Service) -> Response:
        await service.store.get(name)  # 404 for an unknown experiment
        return _page("experiment.html", name=name)

    @router.get("/dashboard/{name}/data")
    async def experiment_data(
        name: str,
        request: Request,
        service: Service,
        window_s: Annotated[float, Query(gt=0, le=MAX_WINDOW_S)] = 3600.0,
        step_s: Annotated[float | None, Query(ge=10, le=86400)] = None,
    ) -> dict[str, Any]:
        """One snapshot of everything /dashboard/{name} draws."""
        ops = Lifecycle(service.redis, service.stats)
        described = await ops.describe(name)
        stats = await experiment_stats(service, name, window_s=window_s)
        series = await experiment_timeseries(service, name, window_s=window_s, step_s=step_s)
        versions = await ops.versions(name)
        policies = await ops.policies(name)
        return {
            "experiment": described,
            "stats": stats,
            "timeseries": series,
            "rollout": await rollout_state(request, name),
            "versions": versions[-HISTORY_SHOWN:][::-1],
            "policies": {
                "current": policies["current"],
                "versions": policies["versions"][-HISTORY_SHOWN:][::-1],
                "history": policies["history"][:HISTORY_SHOWN],
            },
        }

    return router
