"""The monitor's baseline and latest reports through the control plane.

`banditgate monitor baseline` stores a baseline here; the monitoring worker (monitor/)
reads it from Redis and writes each arm's latest report back, which these routes,
/metrics and the dashboard read. This component only stores and shows the JSON.
"""

from __future__ import annotations

import time
from typing import Any, cast

import orjson
from fastapi import APIRouter, Request

from banditgate import keys
from banditgate.contracts import check_event_id
from banditgate.errors import InvalidInput
from banditgate.event_index import lookup
from experiments.api import Name, read_body
from experiments.service import Admin, Service

MAX_BASELINE_BYTES = 32 * 1024 * 1024
MAX_LABELS = 10_000
LABEL_LOOKBACK_MS = 30 * 86400 * 1000  # the event index expires well before this
GROUND_TRUTH_MAXLEN = 5_000_000
UNKNOWN_LABELS = "bg:{groundtruth}:unknown"  # labels for events no router indexed (or expired)


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


async def latest_reports(redis: Any, name: str, key: str | None = None) -> dict[str, Any]:
    raw = cast(dict[bytes, bytes], await redis.hgetall(key or keys.monitor_latest(name)))
    out = {}
    for arm, report in raw.items():
        try:
            out[arm.decode()] = orjson.loads(report)
        except orjson.JSONDecodeError:
            continue
    return out


def _labels(body: Any) -> list[dict[str, Any]]:
    if not isinstance(body, dict) or not isinstance(body.get("labels"), list):
        raise InvalidInput(
            'the body is {"labels": [{"event_id", "label"}, ...]}', field="body.labels"
        )
    labels = body["labels"]
    if not 1 <= len(labels) <= MAX_LABELS:
        raise InvalidInput(f"send 1 to {MAX_LABELS} labels at a time", field="body.labels")
    for index, item in enumerate(labels):
        where = f"body.labels[{index}]"
        if not isinstance(item, dict):
            raise InvalidInput("a label is an object", field=where)
        unknown = sorted(set(item) - {"event_id", "label", "experiment"})
        if unknown:
            raise InvalidInput(f"unknown keys {unknown}", field=where)
        check_event_id(item.get("event_id"), f"{where}.event_id")
        if "label" not in item or isinstance(item["label"], dict | list):
            raise InvalidInput("a label is a number, a string or a boolean", field=f"{where}.label")
        if "experiment" in item and not isinstance(item["experiment"], str):
            raise InvalidInput("experiment is a name", field=f"{where}.experiment")
    return labels


def ground_truth_routes() -> APIRouter:
    router = APIRouter(tags=["monitor"])

    @router.post("/v1/ground-truth", dependencies=[Admin])
    async def ground_truth(request: Request, service: Service) -> dict[str, Any]:
        """Ground-truth labels for logged events (SageMaker's ground-truth merge): each is
        matched to its experiment through the routers' event index (or names it), kept for
        the monitor's model-quality reports; a label for an unknown or expired event is
        counted and listed, not stored."""
        labels = _labels(await read_body(request))
        now_ms = int(time.time() * 1000)
        unresolved = [item["event_id"] for item in labels if "experiment" not in item]
        found = await lookup(
            service.redis, unresolved, newest_ms=now_ms, oldest_ms=now_ms - LABEL_LOOKBACK_MS
        )
        names = set(await service.store.names())
        by_experiment: dict[str, list[dict[str, Any]]] = {}
        unknown: list[str] = []
        for item in labels:
            experiment = item.get("experiment") or found.get(item["event_id"])
            if experiment is None or experiment not in names:
                unknown.append(item["event_id"])
                continue
            by_experiment.setdefault(experiment, []).append(item)
        async with service.redis.pipeline(transaction=False) as pipe:
            for experiment, items in by_experiment.items():
                for item in items:
                    pipe.xadd(
                        keys.ground_truth(experiment),
                        {"e": item["event_id"], "l": orjson.dumps(item["label"])},
                        maxlen=GROUND_TRUTH_MAXLEN,
                        approximate=True,
                    )
                pipe.hincrby(keys.ground_truth_counters(experiment), "received", len(items))
            if unknown:
                pipe.hincrby(UNKNOWN_LABELS, "labels", len(unknown))
            await pipe.execute()
        return {
            "accepted": len(labels) - len(unknown),
            "by_experiment": {e: len(items) for e, items in sorted(by_experiment.items())},
            "unknown": len(unknown),
            "unknown_event_ids": unknown[:100],
        }

    return router


def routes() -> APIRouter:
    outer = APIRouter()
    outer.include_router(ground_truth_routes())
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
        counters = cast(
            dict[bytes, bytes], await service.redis.hgetall(keys.ground_truth_counters(name))
        )
        return {
            "experiment": name,
            "configured": spec.monitor is not None,
            "baseline": has_baseline,
            "arms": await latest_reports(service.redis, name),
            "quality": {
                "configured": spec.quality is not None,
                "labels_received": int(counters.get(b"received", 0)),
                "arms": await latest_reports(service.redis, name, keys.monitor_quality(name)),
            },
        }

    outer.include_router(router)
    return outer
