"""Deferred activation: a decision that waits in Redis until the caller activates it.

Personalizer's `deferActivation`: the rank is answered at once, but the event may never be
shown; only `activate` says it was. So the decisions of a deferred event (one, or one per
slot) wait in a hash under their experiment, with a deadline (decision time + the reward
window). `activate` takes them atomically and logs them like any decision, stamped with
the activation time, so the reward window starts then and the joiner and trainer never see
an event that was not activated. A sweep drops events whose deadline passed and counts
them (`events_never_activated` in the join counters, reported by stats and /metrics).

A crash after `take` and before the in-memory decision log flushes loses those decisions,
as it would lose any decision not yet flushed; nothing is logged twice.
"""

from __future__ import annotations

from typing import Any, cast

import orjson

from banditgate import keys
from banditgate.contracts import JoinCounter
from banditgate.events import Decision
from banditgate.redis import Redis
from banditgate.scripts import register

SWEEP_BATCH = 1000


class DeferredStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._take = register(redis, "router", "deferred_take.lua")
        self._sweep = register(redis, "router", "deferred_sweep.lua")

    async def put(
        self, experiment: str, event_id: str, decisions: list[Decision], deadline_ms: int
    ) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.deferred(experiment), event_id, orjson.dumps(decisions))
            pipe.zadd(keys.deferred_deadlines(experiment), {event_id: deadline_ms})
            await pipe.execute()

    async def take(
        self, experiment: str, event_id: str, now_ms: int
    ) -> tuple[bool, list[Decision]] | None:
        """None: not deferred; (False, decisions): too late, dropped; (True, decisions): log them."""
        answer = await self._take(
            keys=[
                keys.deferred(experiment),
                keys.deferred_deadlines(experiment),
                keys.join_counters(experiment),
            ],
            args=[event_id, now_ms, JoinCounter.EVENTS_NEVER_ACTIVATED.value],
        )
        if not answer:
            return None
        live, raw = cast(list[Any], answer)
        decisions: list[Decision] = orjson.loads(raw)
        return bool(live), decisions

    async def waiting(self, experiment: str, event_id: str) -> bool:
        return bool(await self.redis.hexists(keys.deferred(experiment), event_id))

    async def sweep(self, experiment: str, now_ms: int) -> int:
        """Drop and count the events past their deadline; how many were dropped."""
        dropped = await self._sweep(
            keys=[
                keys.deferred(experiment),
                keys.deferred_deadlines(experiment),
                keys.join_counters(experiment),
            ],
            args=[now_ms, JoinCounter.EVENTS_NEVER_ACTIVATED.value, SWEEP_BATCH],
        )
        return int(cast(int, dropped))
