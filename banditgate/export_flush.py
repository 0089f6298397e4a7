"""Export flush requests: ask the running exporters to close their open files now.

Whoever asks (the control plane's `POST /v1/export/flush`, which `banditgate export
flush` calls) publishes a request on `bg:export:flush` (PUBLISH answers how many
exporters are listening; on a Redis Cluster both channels are sharded, SPUBLISH and
SSUBSCRIBE, because a plain PUBLISH there counts the subscribers of one node only) and waits for that many replies on a reply channel of its
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
from banditgate.announce import listen, next_message, publish, subscribe
from banditgate.redis import Redis, pubsub_for, sharded_client

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
    sharded = sharded_client(redis) is not None
    pubsub = await pubsub_for(redis)
    try:
        await subscribe(pubsub, keys.export_flush_reply(request), sharded=sharded)
        listening = await publish(
            redis, keys.EXPORT_FLUSH_CHANNEL, request_message(request, experiment), sharded=True
        )
        outcome = FlushOutcome(listening)
        deadline = time.monotonic() + timeout_s
        while not outcome.complete:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            message = await next_message(pubsub, sharded=sharded, timeout=min(left, 1.0))
            if message is not None:
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

    await listen(redis, enqueue, ready=ready, channel=keys.EXPORT_FLUSH_CHANNEL, sharded=True)


async def reply(redis: Redis, request: str, answer: dict[str, Any]) -> None:
    await publish(redis, keys.export_flush_reply(request), orjson.dumps(answer), sharded=True)
