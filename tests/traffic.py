"""Client traffic for router tests: SageMaker-style invocations over real loopback HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import aiohttp
import orjson

from banditgate import keys
from banditgate.events import Decision, decode_decision_batch
from banditgate.redis import Redis


@dataclass
class Reply:
    status: int
    variant: str | None
    event_id: str | None
    body: bytes


async def invoke(
    session: aiohttp.ClientSession,
    url: str,
    experiment: str,
    *,
    event_id: str | None = None,
    body: object | None = None,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    out = {"content-type": "application/json", **(headers or {})}
    if event_id is not None:
        out["x-amzn-sagemaker-inference-id"] = event_id
    payload = orjson.dumps(body if body is not None else {"features": ["fine"]})
    async with session.post(
        f"{url}/endpoints/{experiment}/invocations", data=payload, headers=out
    ) as response:
        return Reply(
            response.status,
            response.headers.get("x-banditgate-variant"),
            response.headers.get("x-banditgate-event-id"),
            await response.read(),
        )


async def invoke_many(
    url: str,
    experiment: str,
    event_ids: Sequence[str],
    *,
    headers: Mapping[str, str] | None = None,
    body: object | None = None,
    concurrency: int = 32,
) -> list[Reply]:
    """One request per event id, `concurrency` at a time; replies in event-id order."""
    gate = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as session:

        async def one(event_id: str) -> Reply:
            async with gate:
                return await invoke(
                    session, url, experiment, event_id=event_id, headers=headers, body=body
                )

        return list(await asyncio.gather(*(one(e) for e in event_ids)))


async def decisions(redis: Redis, experiment: str) -> list[Decision]:
    out: list[Decision] = []
    for _, fields in await redis.xrange(keys.decisions(experiment)):
        out.extend(decode_decision_batch(fields))
    return out


async def decision_count(redis: Redis, experiment: str) -> int:
    total = 0
    for _, fields in await redis.xrange(keys.decisions(experiment)):
        total += int(fields[b"n"])
    return total
