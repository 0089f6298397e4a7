"""Change announcements over Redis pub/sub: specs, weights and policy versions."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

import orjson
from redis.exceptions import RedisError

from banditgate import keys
from banditgate.redis import Redis, is_cluster, pubsub_for, sharded_client

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any] | None], Awaitable[None]]


def message(experiment: str, kind: str, **extra: Any) -> bytes:
    return orjson.dumps({"experiment": experiment, "kind": kind, **extra})


async def announce(redis: Redis, experiment: str, kind: str, **extra: Any) -> None:
    await redis.publish(keys.ANNOUNCE_CHANNEL, message(experiment, kind, **extra))


class AfterCommit:
    """The announcements of one transaction.

    On one Redis they are queued inside the MULTI, so they go out exactly when the write
    commits. On a Redis Cluster a transaction holds the keys of one slot and redis-py refuses
    PUBLISH in a cluster pipeline, so they are sent right after EXEC (`send()`): a process
    that dies in between loses that announcement; subscribers pick the change up at their
    next resync (every resubscription) or with the next announcement of the experiment.
    """

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.pending: list[tuple[str, bytes]] = []

    def add(self, pipe: Any, experiment: str, kind: str, **extra: Any) -> None:
        payload = message(experiment, kind, **extra)
        if is_cluster(self.redis):
            self.pending.append((keys.ANNOUNCE_CHANNEL, payload))
        else:
            pipe.publish(keys.ANNOUNCE_CHANNEL, payload)

    async def send(self) -> None:
        pending, self.pending = self.pending, []
        for channel, payload in pending:
            await self.redis.publish(channel, payload)


async def publish(redis: Redis, channel: str, payload: bytes, *, sharded: bool = False) -> int:
    """PUBLISH; how many subscribers got it. `sharded` on a cluster: SPUBLISH, whose count
    covers every subscriber (a plain PUBLISH counts only those of the node it was sent to)."""
    cluster = sharded_client(redis) if sharded else None
    if cluster is not None:
        return int(await cluster.spublish(channel, payload))
    return int(await redis.publish(channel, payload))


async def subscribe(pubsub: Any, channel: str, *, sharded: bool) -> None:
    await (pubsub.ssubscribe(channel) if sharded else pubsub.subscribe(channel))


async def next_message(pubsub: Any, *, sharded: bool, timeout: float) -> dict[str, Any] | None:
    """The next published message (or None after `timeout`), subscription replies skipped."""
    if sharded:
        raw = await pubsub.get_sharded_message(ignore_subscribe_messages=True, timeout=timeout)
    else:
        raw = await pubsub.get_message(timeout=timeout)
    if raw is None or raw.get("type") not in ("message", "smessage"):
        return None
    return cast(dict[str, Any], raw)


async def listen(
    redis: Redis,
    handler: Handler,
    *,
    ready: asyncio.Event | None = None,
    channel: str = keys.ANNOUNCE_CHANNEL,
    sharded: bool = False,
) -> None:
    """Call `handler(msg)` per JSON object published on `channel` (announcements by default),
    and `handler(None)` after each (re)subscription, to resync what was missed.

    `sharded`: on a cluster, SSUBSCRIBE (for channels published with `publish(sharded=True)`).
    """
    sharded = sharded and sharded_client(redis) is not None
    backoff = 0.1
    while True:
        pubsub = None
        try:
            pubsub = await pubsub_for(redis)
            await subscribe(pubsub, channel, sharded=sharded)
            # Anything announced while we were not subscribed is recovered by a full resync.
            await handler(None)
            if ready is not None:
                ready.set()
            backoff = 0.1
            while True:
                raw = await next_message(pubsub, sharded=sharded, timeout=1.0)
                if raw is None:
                    continue
                try:
                    payload = orjson.loads(raw["data"])
                except orjson.JSONDecodeError:
                    log.warning(
                        "ignoring a malformed message on %s: %r", channel, raw["data"][:200]
                    )
                    continue
                if isinstance(payload, dict):
                    await handler(payload)
        except asyncio.CancelledError:
            raise
        except (RedisError, OSError) as exc:
            log.warning("subscription to %s lost (%s); retrying in %.1fs", channel, exc, backoff)
            if ready is not None:
                ready.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
        finally:
            try:
                if pubsub is not None:
                    await pubsub.aclose()
            except Exception:
                log.debug("pubsub close failed", exc_info=True)
