"""Records go to an in-memory queue; one background task writes them to Redis in batches.

The one batched writer behind the decision log and the shadow results. A producer never
waits on Redis: `put` appends to a deque and wakes the flusher, which lets a batch gather
for `linger_s`, then sends up to `max_batch` records per pipeline (`write` says how).

While Redis is unreachable the queue holds up to `max_buffer` records and the flusher
retries with backoff (50 ms, doubling to 2 s). Past the bound the oldest records are
dropped and counted, on `put` and after a failed flush puts its batch back at the front.
`stop()` cancels the flusher, then flushes what is queued, retrying until its deadline;
what is left then is logged as lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from banditgate.redis import Redis
from router.metrics import WriterMetrics

log = logging.getLogger(__name__)

R = TypeVar("R")

_BACKOFF_FIRST_S = 0.05
_BACKOFF_MAX_S = 2.0
_STOP_RETRY_S = 0.1


@dataclass
class WriterStats:
    appended: int = 0
    flushed: int = 0
    dropped: int = 0
    flush_errors: int = 0
    batches: int = 0


class StreamWriter(ABC, Generic[R]):
    """Subclasses implement `write`: queue one batch's commands on a pipeline."""

    what = "records"  # for log lines

    def __init__(
        self,
        redis: Redis,
        *,
        max_batch: int,
        max_buffer: int,
        linger_s: float,
        metrics: WriterMetrics | None = None,
    ) -> None:
        self.redis = redis
        self.max_batch = max_batch
        self.max_buffer = max_buffer
        self.linger_s = linger_s
        self.metrics = metrics
        self.stats = WriterStats()
        self._queue: deque[R] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @abstractmethod
    def write(self, pipe: Pipeline, batch: list[R]) -> None:
        """Queue the commands that store `batch` (no I/O: the pipeline is sent after)."""

    def put(self, record: R) -> None:
        """Queue one record; never waits. A full queue drops its oldest record."""
        if len(self._queue) >= self.max_buffer:
            self._queue.popleft()
            self._dropped(1)
        self._queue.append(record)
        self.stats.appended += 1
        if not self._wakeup.is_set():
            self._wakeup.set()

    @property
    def pending(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{type(self).__name__}-flusher")
            self._task.add_done_callback(_log_failure)

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the flusher, then flush what is queued (retrying until `timeout_s`)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        deadline = time.monotonic() + timeout_s
        while self._queue and time.monotonic() < deadline:
            if not await self.flush_once():
                await asyncio.sleep(_STOP_RETRY_S)
        if self._queue:
            log.error("shutting down with %d %s not flushed", len(self._queue), self.what)

    async def _run(self) -> None:
        backoff = _BACKOFF_FIRST_S
        while True:
            await self._wakeup.wait()
            # Let a batch gather: one pipeline per interval, not per record, keeps the
            # Redis client's work per record at a few microseconds under any load.
            await asyncio.sleep(self.linger_s)
            self._wakeup.clear()
            while self._queue:
                if await self.flush_once():
                    backoff = _BACKOFF_FIRST_S
                else:
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _BACKOFF_MAX_S)

    async def flush_once(self) -> bool:
        """Send up to `max_batch` queued records; on failure they go back to the queue front."""
        queue = self._queue
        batch: list[R] = []
        while queue and len(batch) < self.max_batch:
            batch.append(queue.popleft())
        if not batch:
            return True
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                self.write(pipe, batch)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self.stats.flush_errors += 1
            log.warning("%s flush failed (%s); %d requeued", self.what, exc, len(batch))
            queue.extendleft(reversed(batch))
            excess = len(queue) - self.max_buffer
            for _ in range(excess):
                queue.popleft()
            if excess > 0:
                self._dropped(excess)
            if self.metrics is not None:
                self.metrics.flush_failures.inc()
                self.metrics.pending.set(len(queue))
            return False
        self.stats.flushed += len(batch)
        self.stats.batches += 1
        if self.metrics is not None:
            self.metrics.pending.set(len(queue))
        return True

    def _dropped(self, count: int) -> None:
        self.stats.dropped += count
        if self.metrics is not None:
            self.metrics.dropped.inc(count)


def _log_failure(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("task %s failed", task.get_name(), exc_info=exc)
