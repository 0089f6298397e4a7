"""Change announcements over Redis pub/sub: specs, weights and policy versions."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from redis.exceptions import RedisError

from banditgate import keys
from banditgate.redis import Redis

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any] | None], Awaitable[None]]


def message(experiment: str, kind: str, **extra: Any) -> bytes:
    return orjson.dumps({"experiment": experiment, "kind": kind, **extra})


async def announce(redis: Redis, experiment: str, kind: str, **extra: Any) -> None:
    await redis.publish(keys.ANNOUNCE_CHANNEL, message(experiment, kind, **extra))


async def listen(
    redis: Redis,
    handler: Handler,
    *,
    ready: asyncio.Event | None = None,
    channel: str = keys.ANNOUNCE_CHANNEL,
) -> None:
    """Call `handler(msg)` per JSON object published on `channel` (announcements by default),
    and `handler(None)` after each (re)subscription, to resync what was missed."""
    backoff = 0.1
    while True:
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(channel)
            # Anything announced while we were not subscribed is recovered by a full resync.
            await handler(None)
            if ready is not None:
                ready.set()
            backoff = 0.1
            while True:
                raw = await pubsub.get_message(timeout=1.0)
                if raw is None or raw.get("type") != "message":
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
                await pubsub.aclose()
            except Exception:
                log.debug("pubsub close failed", exc_info=True)
