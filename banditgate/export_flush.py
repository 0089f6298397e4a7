"""Export flush requests: ask the running exporters to close their open files now.

Whoever asks (the control plane's `POST /v1/export/flush`, which `banditgate export
flush` calls) publishes a request on `bg:export:flush` (PUBLISH answers how many
exporters are listening) and waits for that many replies on a reply channel of its
own. Each exporter first exports everything joined so far, then closes and publishes
its files, then replies. Both sides live here, in the core, because the asking side
is the control plane and the answering side the reward_ingest exporter.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from banditgate import keys
from banditgate.announce import listen
from banditgate.redis import Redis

log = logging.getLogger(__name__)


@dataclass
class FlushOutcome:
    exporters: int  # listening when asked
    replies: list[dict[str, Any]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return len(self.replies) >= self.exporters

    @property
    def files(self) -> int:
        return sum(int(reply.get("files", 0)) for reply in self.replies)

    def to_dict(self) -> dict[str, Any]:
        return {
            "exporters": self.exporters,
            "answered": len(self.replies),
            "files": self.files,
            "complete": self.complete,
            "replies": self.replies,
        }


def request_message(request: str, experiment: str | None) -> bytes:
    return orjson.dumps({"request": request, "experiment": experiment})


async def request_flush(
    redis: Redis, *, experiment: str | None = None, timeout_s: float = 30.0
) -> FlushOutcome:
    request = uuid.uuid4().hex
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe(keys.export_flush_reply(request))
        listening = int(
            await redis.publish(keys.EXPORT_FLUSH_CHANNEL, request_message(request, experiment))
        )
        outcome = FlushOutcome(listening)
        deadline = time.monotonic() + timeout_s
        while not outcome.complete:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            message = await pubsub.get_message(timeout=min(left, 1.0))
            if message is not None and message.get("type") == "message":
                outcome.replies.append(orjson.loads(message["data"]))
        return outcome
    finally:
        await pubsub.aclose()


async def listen_for_flush(
    redis: Redis, requests: asyncio.Queue[dict[str, Any]], ready: asyncio.Event
) -> None:
    """Put each flush request on `requests` (until cancelled)."""

    async def enqueue(payload: dict[str, Any] | None) -> None:
        if payload is not None and isinstance(payload.get("request"), str):
            requests.put_nowait(payload)

    await listen(redis, enqueue, ready=ready, channel=keys.EXPORT_FLUSH_CHANNEL)


async def reply(redis: Redis, request: str, answer: dict[str, Any]) -> None:
    await redis.publish(keys.export_flush_reply(request), orjson.dumps(answer))
