"""Small consumer-group helpers shared by the joiner, the resolver and the exporter."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar, cast

from redis.exceptions import ResponseError

from banditgate.redis import Redis

Entry = tuple[bytes, dict[bytes, bytes] | None]
T = TypeVar("T")


def default_consumer(role: str) -> str:
    return f"{role}-{socket.gethostname()}-{os.getpid()}"


async def xautoclaim_pages(
    redis: Redis, stream: str, group: str, consumer: str, *, min_idle_ms: int, count: int
) -> AsyncIterator[list[Entry]]:
    """XAUTOCLAIM through the whole pending list, a page at a time (a page may be empty)."""
    start: bytes | str = "0-0"
    while True:
        reply = await redis.xautoclaim(stream, group, consumer, min_idle_ms, start, count=count)
        start = reply[0]
        yield cast(list[Entry], reply[1])
        if start in (b"0-0", "0-0"):
            return


def by_stream(response: Any) -> dict[str, list[Entry]]:
    """XREADGROUP's answer as {stream name: entries}, whichever protocol shape it came in."""
    out: dict[str, list[Entry]] = {}
    if not response:
        return out
    items = response.items() if isinstance(response, dict) else response
    for name, entries in items:
        key = name.decode() if isinstance(name, bytes) else str(name)
        if (
            entries
            and isinstance(entries[0], list)
            and entries[0]
            and isinstance(entries[0][0], tuple)
        ):
            entries = entries[0]  # RESP3 legacy wrapping
        out[key] = list(entries or [])
    return out


async def unless_stopped(awaitable: Awaitable[T], stop: asyncio.Event) -> tuple[bool, T | None]:
    """Await `awaitable` unless `stop` is set first; then cancel it. Returns (completed, result)."""
    if stop.is_set():
        if asyncio.iscoroutine(awaitable):
            awaitable.close()
        return False, None
    task = asyncio.ensure_future(awaitable)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if task in done:
        return True, task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return False, None


async def sleep_unless_stopped(seconds: float, stop: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=max(seconds, 0))


async def retire_consumer(redis: Redis, stream: str, group: str, consumer: str) -> None:
    """Leave the group if this consumer holds nothing (a pending entry is never dropped)."""
    with contextlib.suppress(ResponseError):
        pending = await redis.xpending_range(
            stream, group, min="-", max="+", count=1, consumername=consumer
        )
        if not pending:
            await redis.xgroup_delconsumer(stream, group, consumer)
