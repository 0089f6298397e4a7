"""Locks across processes: owners of an experiment's singleton work, and the control lock."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Any

from redis.exceptions import LockError

from banditgate import keys
from banditgate.errors import Conflict
from banditgate.redis import Redis
from banditgate.scripts import register

CONTROL_LOCK_TIMEOUT_S = 10.0

# Control locks held, with the task holding each: a store method called under the lock does
# not wait for itself, while a task started under it (which inherits the context) still waits.
_held: ContextVar[frozenset[tuple[asyncio.Task[Any] | None, str]]] = ContextVar(
    "banditgate_control_locks", default=frozenset()
)


class OwnerLocks:
    """Locks with expiry held by one owner name; holding again renews. A crashed owner's lock lapses."""

    def __init__(self, redis: Redis, *, owner: str, ttl_ms: int) -> None:
        self.owner = owner
        self.ttl_ms = ttl_ms
        self._acquire = register(redis, "banditgate", "locks_hold.lua")
        self._release = register(redis, "banditgate", "locks_release.lua")

    async def hold(self, key: str) -> bool:
        return bool(await self._acquire(keys=[key], args=[self.owner, self.ttl_ms]))

    async def release(self, key: str) -> None:
        await self._release(keys=[key], args=[self.owner])


@contextlib.asynccontextmanager
async def control_lock(
    redis: Redis, experiment: str, *, timeout_s: float = CONTROL_LOCK_TIMEOUT_S
) -> AsyncIterator[None]:
    """Serialise every change to one experiment's spec, weights and policies.

    Re-entrant within one task (not in tasks it starts). Waits up to `timeout_s`, then raises Conflict; a holder
    that dies loses the lock after `timeout_s`.
    """
    key = keys.control_lock(experiment)
    mine = (asyncio.current_task(), key)
    held = _held.get()
    if mine in held:
        yield
        return
    lock = redis.lock(key, timeout=timeout_s, blocking_timeout=timeout_s)
    try:
        acquired = await lock.acquire()
    except LockError:
        acquired = False
    if not acquired:
        raise Conflict(f"experiment {experiment!r} is being changed by another call; retry")
    token = _held.set(held | {mine})
    try:
        yield
    finally:
        _held.reset(token)
        # LockError: it expired under a very slow call; the next writer already holds it.
        with contextlib.suppress(LockError):
            await lock.release()
