"""Export flush requests: ask the running exporters to close their open files now.

Whoever asks (the control plane's `POST /v1/export/flush`, which `banditgate export
flush` calls) publishes a request on `bg:export:flush` (PUBLISH answers how many
exporters are listening; on a Redis Cluster both channels are sharded, SPUBLISH and
SSUBSCRIBE, because a plain PUBLISH there counts the subscribers of one node only) and
waits for that many replies on a reply channel of its own. Each exporter first exports
everything joined so far (taking over what a dead exporter left pending), then closes
and publishes its files, then replies. Both sides live here, in the core, because the
asking side is the control plane and the answering side the reward_ingest exporter.

The replies alone prove little (no exporter may be running, one may have died holding
entries): the asking side notes each experiment's newest joined entry before asking,
and the flush is complete only once the exporters' group has acknowledged every entry
up to it (acknowledged = in a closed, committed file).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.exceptions import ResponseError

from banditgate import contracts, keys
from banditgate.announce import listen, next_message, publish, subscribe
from banditgate.redis import Redis, pubsub_for, sharded_client

log = logging.getLogger(__name__)


_COUNT_CAP = 1_000_000


@dataclass
class FlushOutcome:
    exporters: int  # listening when asked
    replies: list[dict[str, Any]] = field(default_factory=list)
    # Per experiment: joined examples up to the request that are not in a closed file yet.
    unexported: dict[str, int] = field(default_factory=dict)

    @property
    def answered(self) -> bool:
        return len(self.replies) >= self.exporters

    @property
    def complete(self) -> bool:
        return self.answered and not any(self.unexported.values())

    @property
    def files(self) -> int:
        return sum(int(reply.get("files", 0)) for reply in self.replies)

    def to_dict(self) -> dict[str, Any]:
        return {
            "exporters": self.exporters,
            "answered": len(self.replies),
            "files": self.files,
            "complete": self.complete,
            "unexported": sum(self.unexported.values()),
            "replies": self.replies,
        }


def request_message(request: str, experiment: str | None) -> bytes:
    return orjson.dumps({"request": request, "experiment": experiment})


async def request_flush(
    redis: Redis,
    *,
    experiments: list[str],
    experiment: str | None = None,
    timeout_s: float = 30.0,
) -> FlushOutcome:
    """Ask, wait for every listening exporter, then for the acknowledgements (until timeout)."""
    request = uuid.uuid4().hex
    chosen = [name for name in experiments if experiment is None or name == experiment]
    targets = await newest_joined(redis, chosen)
    deadline = time.monotonic() + timeout_s
    sharded = sharded_client(redis) is not None
    pubsub = await pubsub_for(redis)
    try:
        await subscribe(pubsub, keys.export_flush_reply(request), sharded=sharded)
        listening = await publish(
            redis, keys.EXPORT_FLUSH_CHANNEL, request_message(request, experiment), sharded=True
        )
        outcome = FlushOutcome(listening)
        while not outcome.answered:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            message = await next_message(pubsub, sharded=sharded, timeout=min(left, 1.0))
            if message is not None:
                outcome.replies.append(orjson.loads(message["data"]))
    finally:
        await pubsub.aclose()
    while True:
        outcome.unexported = {
            name: await unexported(redis, name, target) for name, target in targets.items()
        }
        if outcome.complete or not outcome.exporters or time.monotonic() >= deadline:
            return outcome
        await asyncio.sleep(0.1)


async def newest_joined(redis: Redis, experiments: list[str]) -> dict[str, bytes]:
    targets: dict[str, bytes] = {}
    for name in experiments:
        newest: Any = await redis.xrevrange(keys.joined(name), count=1)
        if newest:
            targets[name] = newest[0][0]
    return targets


async def unexported(redis: Redis, experiment: str, target: bytes) -> int:
    """Joined entries up to `target` the exporters' group has not acknowledged."""
    stream = keys.joined(experiment)
    try:
        groups: Any = await redis.xinfo_groups(stream)
    except ResponseError:  # the stream is gone (deleted experiment, emptied Redis)
        return 0
    group = next((g for g in groups if _text(g["name"]) == contracts.EXPORTER_GROUP), None)
    if group is None:
        return len(await redis.xrange(stream, "-", target, count=_COUNT_CAP) or [])
    delivered = _text(group["last-delivered-id"])
    undelivered = 0
    if _id_key(delivered) < _id_key(_text(target)):
        undelivered = len(
            await redis.xrange(stream, f"({delivered}", target, count=_COUNT_CAP) or []
        )
    held = await redis.xpending_range(
        stream, contracts.EXPORTER_GROUP, min="-", max=target, count=_COUNT_CAP
    )
    return undelivered + len(held)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _id_key(message_id: str) -> tuple[int, int]:
    ms, _, seq = message_id.partition("-")
    return int(ms), int(seq or 0)


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
