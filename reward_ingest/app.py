"""The reward webhook's HTTP surface; `RewardIntake` does the work.

`POST /v1/rewards` takes one reward `{"event_id", "value"}`, a batch `{"rewards": [...]}`
(or a bare JSON array), or JSON lines. `POST /v1/events/{event_id}/reward` takes
`{"value": ...}`. Either may name the experiment (`"experiment"` in an item, or
`?experiment=`). The answer is 202 with counts:

    {"accepted": 9998, "unrouted": 3, "rejected": 2,
     "errors": [{"index": 17, "type": "InvalidInput", "message": "...",
                 "field": "rewards[17].value"}]}

Every item whose index is not in `errors` was accepted. Range checks against the
experiment's `[reward.min, reward.max]` happen here when the experiment is known (named, or
found through the router's event index); a reward whose decision is not indexed yet is
accepted as `unrouted` and range-checked once the joiner's resolver finds its experiment
(an out-of-range one is then counted as `rewards_invalid`, never joined).

A request that is one reward answers its problem as the HTTP error itself (400, 404 or
422); so does a batch in which no item was accepted (with `errors` alongside). Malformed
JSON is 400, a batch over `max_batch` is 413, a missing or wrong reward key is 401.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, FastAPI, Header, Query, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from banditgate.errors import (
    BanditgateError,
    InvalidInput,
    MalformedJSON,
    PayloadTooLarge,
    UnknownExperiment,
)
from banditgate.http import BearerKeys, health_routes, install_error_handlers, load_keys
from banditgate.metrics import ProcessMetrics
from banditgate.redis import Redis
from reward_ingest.intake import IntakeResult, Problem, RewardIntake
from reward_ingest.metrics import IngestMetrics
from reward_ingest.personalizer import routes as personalizer_routes
from reward_ingest.settings import IngestSettings

log = logging.getLogger(__name__)

JSON_LINES_TYPES = (
    "application/x-ndjson",
    "application/jsonl",
    "application/json-lines",
    "application/x-jsonlines",
)


class Ingest(RewardIntake):
    """The component `banditgate serve` mounts as `app.state.ingest`: intake plus the key check."""

    def __init__(
        self,
        settings: IngestSettings,
        *,
        redis: Redis | None = None,
        metrics: ProcessMetrics | None = None,
    ) -> None:
        super().__init__(settings, redis=redis)
        self.metrics = IngestMetrics(metrics or ProcessMetrics())
        self.keys = BearerKeys(
            load_keys(settings.reward_keys, settings.reward_keys_file), "rewards"
        )


def build(
    settings: IngestSettings, *, redis: Redis | None = None, metrics: ProcessMetrics | None = None
) -> tuple[APIRouter, Ingest]:
    """Routes plus the component that owns their state (`app.state.ingest`); its counters go
    to `metrics` (the host's, under `serve`) or a registry of its own."""
    ingest = Ingest(settings, redis=redis, metrics=metrics)
    router = APIRouter()

    @router.post("/v1/rewards", status_code=202)
    async def post_rewards(
        request: Request,
        experiment: Annotated[str | None, Query()] = None,
        authorization: Annotated[str | None, Header()] = None,
    ) -> Response:
        component = _component(request)
        component.keys.check(authorization, forbidden_on_wrong=False)
        body = await _read_body(request, component.settings.max_body_bytes)
        await _check_named(component, experiment)
        items, batch, problems = parse_rewards(body, request.headers.get("content-type", ""))
        if len(items) > component.settings.max_batch:
            raise PayloadTooLarge(
                f"{len(items)} rewards in one request; at most {component.settings.max_batch}",
                field="rewards",
            )
        if not batch:
            result = await component.submit(items, experiment=experiment, where=lambda _: "")
            component.metrics.count(result)
            return _single(result)
        result = await component.submit(items, experiment=experiment, problems=problems)
        component.metrics.count(result)
        return _batch(result)

    @router.post("/v1/events/{event_id:path}/reward", status_code=202)
    async def post_event_reward(
        event_id: str,
        request: Request,
        experiment: Annotated[str | None, Query()] = None,
        authorization: Annotated[str | None, Header()] = None,
    ) -> Response:
        component = _component(request)
        component.keys.check(authorization, forbidden_on_wrong=False)
        body = await _read_body(request, component.settings.max_body_bytes)
        await _check_named(component, experiment)
        payload = _loads(body)
        if not isinstance(payload, dict):
            raise InvalidInput('body: an object like {"value": 1.0}', field="body")
        item = {**payload, "event_id": event_id}
        result = await component.submit([item], experiment=experiment, where=lambda _: "")
        component.metrics.count(result)
        return _single(result)

    return router, ingest


def create_ingest_app(
    settings: IngestSettings | None = None, *, redis: Redis | None = None
) -> FastAPI:
    """The reward webhook alone (`banditgate ingest`), with its own health routes; the joiner
    runs under `banditgate workers`."""
    routes, ingest = build(settings or IngestSettings(), redis=redis)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await ingest.startup()
        try:
            yield
        finally:
            await ingest.shutdown()

    app = FastAPI(title="banditgate rewards", lifespan=lifespan)
    app.state.ingest = ingest
    install_error_handlers(app)
    app.include_router(routes)
    app.include_router(health_routes(ingest))
    app.include_router(personalizer_routes())

    @app.get("/metrics", response_class=Response, include_in_schema=False)
    async def metrics() -> Response:
        """This process's counters (`banditgate_ingest_*`); scrape every replica and sum."""
        return Response(ingest.metrics.process.render(), media_type=CONTENT_TYPE_LATEST)

    return app


def parse_rewards(body: bytes, content_type: str) -> tuple[list[Any], bool, list[Problem]]:
    """(items, is_batch, problems); a JSON-lines line that does not parse is that item's problem."""
    if not body.strip():
        raise MalformedJSON("the body is empty", field="body")
    lines_declared = content_type.split(";")[0].strip().lower() in JSON_LINES_TYPES
    if not lines_declared:
        try:
            payload = loads(body)
        except ValueError as exc:
            if b"\n" not in body.strip():
                raise MalformedJSON(f"the body is not valid JSON: {exc}", field="body") from None
        else:
            return _shape(payload)
    return _json_lines(body)


def _shape(payload: Any) -> tuple[list[Any], bool, list[Problem]]:
    if isinstance(payload, list):
        return payload, True, []
    if isinstance(payload, dict) and "rewards" in payload:
        rewards = payload["rewards"]
        if not isinstance(rewards, list):
            raise InvalidInput("rewards: must be a list", field="rewards")
        return rewards, True, []
    if isinstance(payload, dict):
        return [payload], False, []
    raise InvalidInput('body: one reward object, {"rewards": [...]}, or JSON lines', field="body")


def _json_lines(body: bytes) -> tuple[list[Any], bool, list[Problem]]:
    items: list[Any] = []
    problems: list[Problem] = []
    for number, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(loads(line))
        except ValueError as exc:
            where = f"rewards[{len(items)}]"
            error = MalformedJSON(f"{where} (line {number}): not valid JSON: {exc}", field=where)
            problems.append(Problem(len(items), error))
            items.append(None)
    if items and len(problems) == len(items):
        raise MalformedJSON(
            f"no line of the body is valid JSON ({problems[0].error.message})", field="body"
        )
    return items, True, problems


def _component(request: Request) -> Ingest:
    component: Ingest = request.app.state.ingest
    return component


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        with contextlib.suppress(ValueError):
            if int(declared) > limit:
                raise PayloadTooLarge(f"request body of {declared} bytes exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _check_named(component: Ingest, experiment: str | None) -> None:
    if experiment is not None and await component.specs.get(experiment) is None:
        error = UnknownExperiment(experiment)
        error.field = "experiment"
        raise error


def loads(body: bytes) -> Any:
    """orjson, or for what it refuses, Python's parser: it reads NaN, Infinity and 1e400 as
    floats, which clients' JSON encoders do emit, so they get a 422 naming the field."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise exc from None


def _loads(body: bytes) -> Any:
    try:
        return loads(body)
    except ValueError as exc:
        raise MalformedJSON(f"the body is not valid JSON: {exc}", field="body") from None


def _json(body: dict[str, Any], status: int) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _counts(result: IntakeResult) -> dict[str, Any]:
    return {
        "accepted": result.accepted,
        "unrouted": result.unrouted,
        "rejected": result.rejected,
        "errors": [problem.to_dict() for problem in result.problems],
    }


def _single(result: IntakeResult) -> Response:
    if result.problems:
        raise result.problems[0].error
    return _json(_counts(result), 202)


def _batch(result: IntakeResult) -> Response:
    body = _counts(result)
    if result.accepted or not result.problems:
        return _json(body, 202)
    statuses = {problem.error.status for problem in result.problems}
    first: BanditgateError = result.problems[0].error
    status = statuses.pop() if len(statuses) == 1 else 422
    summary = BanditgateError(
        f"no reward was accepted; first problem: {first.message}", status, field=first.field
    )
    error = summary.to_dict()["error"]
    error["type"] = first.type if status == first.status else "InvalidInput"
    return _json({"error": error, **body}, status)
