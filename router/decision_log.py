"""Decisions go to an in-memory queue; a background task flushes them to Redis in batches.

A decision reaches Redis within `flush_interval_s` (5 ms) of its request.
A request never waits on Redis. While Redis is unreachable the queue holds up to
`max_buffer` decisions and retries; past that the oldest are dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass

from redis.exceptions import RedisError

from banditgate import keys
from banditgate.events import Decision, decision_batch_fields, event_index_bucket
from banditgate.redis import Redis
from banditgate.scripts import lua_source

log = logging.getLogger(__name__)

# Indexes one flush's event ids in one call (see the script for why).
INDEX_SCRIPT = lua_source("router", "event_index.lua")


@dataclass
class LogStats:
    appended: int = 0
    flushed: int = 0
    dropped: int = 0
    flush_errors: int = 0
    batches: int = 0


class DecisionLog:
    def __init__(
        self,
        redis: Redis,
        *,
        max_batch: int = 2000,
        max_buffer: int = 500_000,
        flush_interval_s: float = 0.005,
        stream_maxlen: int = 2_000_000,
        index_events: bool = True,
    ) -> None:
        self.redis = redis
        self.max_batch = max_batch
        self.max_buffer = max_buffer
        self.stream_maxlen = stream_maxlen
        self.index_events = index_events
        self.flush_interval_s = flush_interval_s
        self.stats = LogStats()
        self._queue: deque[tuple[Decision, int]] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def append(self, decision: Decision, index_ttl_s: int) -> None:
        if len(self._queue) >= self.max_buffer:
            self._queue.popleft()
            self.stats.dropped += 1
        self._queue.append((decision, index_ttl_s))
        self.stats.appended += 1
        if not self._wakeup.is_set():
            self._wakeup.set()

    @property
    def pending(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="decision-log-flusher")

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the flusher, then flush what is queued (retrying until `timeout_s`)."""
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        deadline = time.monotonic() + timeout_s
        while self._queue and time.monotonic() < deadline:
            if not await self.flush_once():
                await asyncio.sleep(0.2)
        if self._queue:
            log.error("shutting down with %d decisions not flushed", len(self._queue))

    async def _run(self) -> None:
        backoff = 0.05
        while not self._stopping:
            await self._wakeup.wait()
            # Let a batch gather: one pipeline per interval, not per request, keeps
            # Redis client work per decision at a few microseconds under any load.
            await asyncio.sleep(self.flush_interval_s)
            self._wakeup.clear()
            while self._queue:
                if await self.flush_once():
                    backoff = 0.05
                else:
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)

    async def flush_once(self) -> bool:
        """Send up to `max_batch` queued decisions; on failure they go back to the queue front."""
        batch: list[tuple[Decision, int]] = []
        while self._queue and len(batch) < self.max_batch:
            batch.append(self._queue.popleft())
        if not batch:
            return True
        by_experiment: dict[str, list[Decision]] = {}
        index: dict[tuple[int, str], list[str]] = {}
        index_ttl: dict[tuple[int, str], int] = {}
        for decision, ttl in batch:
            experiment = decision["experiment"]
            by_experiment.setdefault(experiment, []).append(decision)
            if self.index_events:
                slot = (event_index_bucket(decision["ts_ms"]), experiment)
                index.setdefault(slot, []).append(decision["event_id"])
                index_ttl[slot] = max(index_ttl.get(slot, 0), ttl)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for experiment, decisions in by_experiment.items():
                    pipe.xadd(
                        keys.decisions(experiment),
                        decision_batch_fields(decisions),  # type: ignore[arg-type]
                        maxlen=self.stream_maxlen,
                        approximate=True,
                    )
                for (bucket, experiment), ids in index.items():
                    pipe.eval(
                        INDEX_SCRIPT,
                        1,
                        keys.event_index(bucket),
                        "\n".join(ids),
                        experiment,
                        index_ttl[(bucket, experiment)],
                    )
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self.stats.flush_errors += 1
            log.warning("decision flush failed (%s); %d decisions requeued", exc, len(batch))
            self._queue.extendleft(reversed(batch))
            while len(self._queue) > self.max_buffer:
                self._queue.popleft()
                self.stats.dropped += 1
            return False
        self.stats.flushed += len(batch)
        self.stats.batches += 1
        return True
