"""The monitor's baseline and latest reports through the control plane.

`banditgate monitor baseline` stores a baseline here; the monitoring worker (monitor/)
reads it from Redis and writes each arm's latest report back, which these routes,
/metrics and the dashboard read. This component only stores and shows the JSON.
"""

from __future__ import annotations

from typing import Any, cast

import orjson
from fastapi import APIRouter, Request

from banditgate import keys
from banditgate.errors import InvalidInput
from experiments.api import Name, read_body
from experiments.service import Admin, Service

MAX_BASELINE_BYTES = 32 * 1024 * 1024


def _check_baseline(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidInput("a baseline is an object", field="body")
    for part in ("statistics", "constraints"):
        section = body.get(part)
        if not isinstance(section, dict) or not isinstance(section.get("features"), list):
            raise InvalidInput(f"{part}.features must be a list", field=f"body.{part}")
        for index, feature in enumerate(section["features"]):
            if not isinstance(feature, dict) or not isinstance(feature.get("name"), str):
                raise InvalidInput(
                    "each feature needs a name", field=f"body.{part}.features[{index}]"
                )
    names = {f["name"] for f in body["statistics"]["features"]}
    for index, feature in enumerate(body["constraints"]["features"]):
        if feature["name"] not in names:
            raise InvalidInput(
                f"constraint on {feature['name']!r}, which the statistics do not describe",
                field=f"body.constraints.features[{index}]",
            )
    return {"statistics": body["statistics"], "constraints": body["constraints"]}


async def latest_reports(redis: Any, name: str) -> dict[str, Any]:
    raw = cast(dict[bytes, bytes], await redis.hgetall(keys.monitor_latest(name)))
    out = {}
    for arm, report in raw.items():
        try:
            out[arm.decode()] = orjson.loads(report)
        except orjson.JSONDecodeError:
            continue
    return out


def routes() -> APIRouter:
    router = APIRouter(prefix="/v1/experiments", tags=["monitor"])

    @router.put("/{name}/monitor/baseline", dependencies=[Admin])
    async def put_baseline(name: Name, request: Request, service: Service) -> dict[str, Any]:
        """Store the baseline the monitoring worker compares captured traffic to."""
        await service.store.get(name)
        if int(request.headers.get("content-length") or 0) > MAX_BASELINE_BYTES:
            raise InvalidInput("a baseline is at most 32 MiB", field="body")
        baseline = _check_baseline(await read_body(request))
        await service.redis.set(keys.monitor_baseline(name), orjson.dumps(baseline))
        return {
            "experiment": name,
            "features": len(baseline["statistics"]["features"]),
        }

    @router.get("/{name}/monitor/baseline")
    async def get_baseline(name: Name, service: Service) -> dict[str, Any]:
        """The stored baseline (404 when none)."""
        await service.store.get(name)
        raw = await service.redis.get(keys.monitor_baseline(name))
        if raw is None:
            raise InvalidInput(f"{name} has no monitoring baseline", 404, field="name")
        baseline: dict[str, Any] = orjson.loads(raw)
        return baseline

    @router.get("/{name}/monitor")
    async def latest(name: Name, service: Service) -> dict[str, Any]:
        """Each arm's latest check: records read, violations, distances per feature."""
        spec = await service.store.get(name)
        has_baseline = bool(await service.redis.exists(keys.monitor_baseline(name)))
        return {
            "experiment": name,
            "configured": spec.monitor is not None,
            "baseline": has_baseline,
            "arms": await latest_reports(service.redis, name),
        }

    return router
