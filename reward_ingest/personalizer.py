"""Personalizer's reward routes, answered by the reward intake.

`POST /loops/{experiment}/personalizer[/{version}]/events/{eventId}/reward` with
`{"value": x}`, and `.../multislot/events/{eventId}/reward` with
`{"reward": [{"slotId", "value"}]}` (a slot's decision is the event `{eventId}/{slotId}`).
204 on success, as the SDKs expect; errors in Personalizer's shape with code
InvalidRewardRequest. A reward for an event that was never ranked, or whose reward window
has passed, is refused, and nothing of a refused request is stored.

The event is looked up in the router's event index (and among deferred events waiting for
activation). A decision reaches the index within the router's flush interval, so a reward
sent right after its rank may look unknown for a few milliseconds: the lookup is retried
for `KNOWN_WAIT_S` before it refuses.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from banditgate import keys
from banditgate.errors import (
    BanditgateError,
    InvalidInput,
    MalformedJSON,
    PayloadTooLarge,
    UnknownExperiment,
)
from banditgate.events import EVENT_INDEX_BUCKET_MS, event_index_bucket
from banditgate.http import BearerKeys
from banditgate.personalizer import authorization, error_body, error_status
from banditgate.spec import ExperimentSpec
from reward_ingest.intake import RewardIntake, check_range, check_value

KNOWN_WAIT_S = 0.25
_VERSION = re.compile(r"^v1\.0$|^v1\.1-preview\.\d+$")
_CHUNK = 12
REWARD_ERROR = "InvalidRewardRequest"


def routes() -> APIRouter:
    router = APIRouter(tags=["personalizer"], include_in_schema=False)
    base = "/loops/{experiment}/personalizer"

    async def single(experiment: str, event_id: str, request: Request, version: str) -> Response:
        try:
            _check_version(version, multislot=False)
            ingest = await _start(request, experiment)
            payload = await _json(request, ingest)
            if not isinstance(payload, dict) or set(payload) - {"value"}:
                raise InvalidInput('the body is {"value": <number>}', field="value")
            if "value" not in payload:
                raise InvalidInput("value: required", field="value")
            spec = await _spec(ingest, experiment)
            items = [{"event_id": event_id, "value": payload["value"]}]
            _validate(spec, items, lambda _: "")
            await _check_known(ingest, spec, [event_id], event_id)
            await _submit(ingest, experiment, items, lambda _: "")
        except BanditgateError as error:
            return _error(error)
        return Response(status_code=204)

    async def multi(experiment: str, event_id: str, request: Request, version: str) -> Response:
        try:
            _check_version(version, multislot=True)
            ingest = await _start(request, experiment)
            payload = await _json(request, ingest)
            if not isinstance(payload, dict) or set(payload) - {"reward"}:
                raise InvalidInput('the body is {"reward": [{"slotId", "value"}]}', field="reward")
            rewards = payload.get("reward")
            if not isinstance(rewards, list) or not rewards:
                raise InvalidInput("reward: a non-empty list of {slotId, value}", field="reward")
            items: list[dict[str, Any]] = []
            seen: set[str] = set()
            for index, item in enumerate(rewards):
                where = f"reward[{index}]"
                if not isinstance(item, dict) or set(item) - {"slotId", "value"}:
                    raise InvalidInput(f"{where}: an object with slotId and value", field=where)
                slot = item.get("slotId")
                if not isinstance(slot, str) or not slot:
                    raise InvalidInput(f"{where}.slotId: a slot id", field=f"{where}.slotId")
                if slot in seen:
                    raise InvalidInput(
                        f"{where}.slotId: duplicate slot {slot!r}", field=f"{where}.slotId"
                    )
                seen.add(slot)
                if "value" not in item:
                    raise InvalidInput(f"{where}.value: required", field=f"{where}.value")
                items.append({"event_id": f"{event_id}/{slot}", "value": item["value"]})
            spec = await _spec(ingest, experiment)
            _validate(spec, items, lambda index: f"reward[{index}]")
            await _check_known(ingest, spec, [i["event_id"] for i in items], event_id)
            await _submit(ingest, experiment, items, lambda index: f"reward[{index}]")
        except BanditgateError as error:
            return _error(error)
        return Response(status_code=204)

    # Multi-slot first: a version segment would also match the word multislot.
    @router.post(base + "/multislot/events/{event_id}/reward", status_code=204)
    async def reward_multislot(experiment: str, event_id: str, request: Request) -> Response:
        return await multi(experiment, event_id, request, "")

    @router.post(base + "/{version}/multislot/events/{event_id}/reward", status_code=204)
    async def reward_multislot_versioned(
        experiment: str, version: str, event_id: str, request: Request
    ) -> Response:
        return await multi(experiment, event_id, request, version)

    @router.post(base + "/events/{event_id}/reward", status_code=204)
    async def reward(experiment: str, event_id: str, request: Request) -> Response:
        return await single(experiment, event_id, request, "")

    @router.post(base + "/{version}/events/{event_id}/reward", status_code=204)
    async def reward_versioned(
        experiment: str, version: str, event_id: str, request: Request
    ) -> Response:
        return await single(experiment, event_id, request, version)

    return router


def _check_version(version: str, *, multislot: bool) -> None:
    if version and (not _VERSION.match(version) or (multislot and version == "v1.0")):
        raise BanditgateError(f"no Personalizer API version {version!r} here", status=404)


async def _start(request: Request, experiment: str) -> RewardIntake:
    """The app's reward intake (`app.state.ingest`), after its key check."""
    ingest: RewardIntake = request.app.state.ingest
    checker: BearerKeys = ingest.keys  # type: ignore[attr-defined]
    headers = {k.lower(): v for k, v in request.headers.items()}
    checker.check(authorization(headers), forbidden_on_wrong=False)
    return ingest


async def _json(request: Request, ingest: RewardIntake) -> Any:
    limit = ingest.settings.max_body_bytes
    raw = await request.body()
    if len(raw) > limit:
        raise PayloadTooLarge(f"request body exceeds {limit} bytes")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedJSON(f"the body is not valid JSON: {exc}", field="body") from None


async def _spec(ingest: RewardIntake, experiment: str) -> ExperimentSpec:
    spec: ExperimentSpec | None = await ingest.specs.get(experiment)
    if spec is None:
        raise UnknownExperiment(experiment)
    return spec


def _validate(
    spec: ExperimentSpec, items: list[dict[str, Any]], where: Callable[[int], str]
) -> None:
    """Every value checked before any is stored: a request is taken whole or not at all."""
    for index, item in enumerate(items):
        at = where(index)
        field = f"{at}.value" if at else "value"
        check_range(check_value(item["value"], field), spec, field)


async def _submit(
    ingest: RewardIntake, experiment: str, items: list[dict[str, Any]], where: Any
) -> None:
    result = await ingest.submit(items, experiment=experiment, where=where)
    if result.problems:
        raise result.problems[0].error


async def _check_known(
    ingest: RewardIntake, spec: ExperimentSpec, event_ids: list[str], deferred_id: str
) -> None:
    """Refuse unless every event was ranked and its reward window is still open."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + KNOWN_WAIT_S
    while True:
        now_ms = int(ingest.clock() * 1000)
        if await ingest.redis.hexists(keys.deferred(spec.name), deferred_id):
            return
        buckets = await _buckets(ingest, spec, event_ids, now_ms)
        missing = [e for e in event_ids if e not in buckets]
        if not missing:
            break
        if loop.time() >= deadline:
            raise InvalidInput(
                f"event {missing[0]!r} was never ranked in experiment {spec.name!r}, "
                "or its reward window has passed",
                field="eventId",
            )
        await asyncio.sleep(0.01)
    window_ms = int(spec.reward.window_s * 1000)
    for event_id, bucket in buckets.items():
        # The decision was logged within its bucket; the window closed at the latest then.
        if bucket * EVENT_INDEX_BUCKET_MS + window_ms < now_ms - EVENT_INDEX_BUCKET_MS:
            raise InvalidInput(
                f"event {event_id!r}: its reward window ({spec.reward.window_s:g} s) has passed",
                field="eventId",
            )


async def _buckets(
    ingest: RewardIntake, spec: ExperimentSpec, event_ids: list[str], now_ms: int
) -> dict[str, int]:
    """The index bucket each event id was logged in, for this experiment, newest first."""
    reach_ms = int((spec.reward.window_s + spec.reward.backward_window_s) * 1000) + 600_000
    newest = event_index_bucket(now_ms + 60_000)
    oldest = event_index_bucket(now_ms - reach_ms)
    found: dict[str, int] = {}
    todo = list(dict.fromkeys(event_ids))
    bucket = newest
    while todo and bucket >= oldest:
        chunk = list(range(bucket, max(bucket - _CHUNK, oldest - 1), -1))
        async with ingest.redis.pipeline(transaction=False) as pipe:
            for b in chunk:
                pipe.hmget(keys.event_index(b), todo)
            answers = await pipe.execute()
        for b, values in zip(chunk, answers, strict=True):
            for event_id, value in zip(todo, values, strict=True):
                if value is not None and value.decode() == spec.name and event_id not in found:
                    found[event_id] = b
        todo = [e for e in todo if e not in found]
        bucket -= len(chunk)
    return found


def _error(error: BanditgateError) -> Response:
    return Response(
        orjson.dumps(error_body(error, REWARD_ERROR)),
        status_code=error_status(error),
        media_type="application/json",
    )
