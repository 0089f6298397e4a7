"""Records go to an in-memory queue; one background task writes them to Redis in batches.

The one batched writer behind the decision log and the shadow results. Invariants:

- A record is encoded when it is put (`put`), never later: a record that cannot be
  encoded is refused there, counted (`unencodable`) and logged, and nothing else is held up.
- A producer never waits on Redis. The queue is bounded in records and bytes; past the
  bound, records go to an append-only spill file (bounded in bytes) and come back in
  order once the queue has drained; with the file full too (or no spill file), they are
  dropped and counted.
- A batch holds at most `max_batch` records and `max_batch_bytes` bytes (one record
  larger than that goes alone), one stream entry per experiment.
- Each batch of one stream gets the next sequence number of this writer when first
  sent; a batch whose write may have happened (timeout, reset, frozen server) is sent
  again with the same number, and the server-side script (`log_batch.lua`) skips it if
  it landed: a replay never doubles a record. Unsent batches wait behind it, in order.
- Redis answering while refusing a batch (an error reply, or the connection dropped on
  it while PING works) splits it in two, down to one record, which is then dropped as
  `rejected` and logged: one poisonous record never blocks the ones after it.

A crash loses what is in memory; the spill file of a crashed process is left on disk.
`stop()` cancels the flusher, then flushes what is queued, retrying until its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import orjson
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from banditgate import keys
from banditgate.contracts import BatchField
from banditgate.redis import Redis
from banditgate.scripts import lua_source
from router.metrics import WriterMetrics

log = logging.getLogger(__name__)

R = TypeVar("R")

_BACKOFF_FIRST_S = 0.05
_BACKOFF_MAX_S = 2.0
_STOP_RETRY_S = 0.1
_SEQ_TTL_S = 7 * 24 * 3600
# A batch that failed this often while Redis answers PING is being refused: split it.
_REFUSALS_BEFORE_SPLIT = 2

BATCH_SCRIPT = lua_source("router", "log_batch.lua")


class Entry:
    """One encoded record and what routing it to its stream needs."""

    __slots__ = ("event_id", "group", "payload", "ts_ms", "ttl")

    def __init__(self, group: str, event_id: str, ts_ms: int, ttl: int, payload: bytes) -> None:
        self.group = group  # the experiment
        self.event_id = event_id
        self.ts_ms = ts_ms
        self.ttl = ttl
        self.payload = payload

    def to_line(self) -> bytes:
        # orjson never writes a raw tab or newline, so both separate safely.
        head = orjson.dumps([self.group, self.event_id, self.ts_ms, self.ttl])
        return head + b"\t" + self.payload + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> Entry:
        head, payload = line.rstrip(b"\n").split(b"\t", 1)
        group, event_id, ts_ms, ttl = orjson.loads(head)
        return cls(group, event_id, ts_ms, ttl, payload)


@dataclass
class Batch:
    group: str
    entries: list[Entry]
    seq: int = 0  # 0: never sent; else the number it was (maybe) stored under
    failures: int = 0

    def records(self) -> bytes:
        return b"[" + b",".join(e.payload for e in self.entries) + b"]"


@dataclass
class WriterStats:
    appended: int = 0
    flushed: int = 0
    dropped: int = 0
    flush_errors: int = 0
    batches: int = 0
    unencodable: int = 0
    rejected: int = 0
    replayed: int = 0  # batches found already stored when re-sent
    spilled: int = 0


class SpillFile:
    """An append-only file of entries, read back in order, truncated once fully read."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._out: Any = None
        self._in: Any = None
        self.written = 0
        self.read = 0

    @property
    def unread(self) -> int:
        return self.written - self.read

    def append(self, entry: Entry) -> bool:
        line = entry.to_line()
        if self.written + len(line) > self.max_bytes:
            return False
        if self._out is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._out = open(self.path, "ab")  # noqa: SIM115 - kept open while spilling
        self._out.write(line)
        self.written += len(line)
        return True

    def take(self, max_count: int, max_bytes: int) -> list[Entry]:
        if self.unread <= 0:
            return []
        if self._in is None:
            self._out.flush()
            self._in = open(self.path, "rb")  # noqa: SIM115 - kept open while draining
        else:
            self._out.flush()
        entries: list[Entry] = []
        size = 0
        while self.read < self.written and len(entries) < max_count and size < max_bytes:
            line = self._in.readline()
            if not line:
                break
            self.read += len(line)
            size += len(line)
            entries.append(Entry.from_line(line))
        return entries

    def reset(self) -> None:
        """Everything was read: start over with an empty file."""
        for handle in (self._in, self._out):
            if handle is not None:
                handle.close()
        self._in = self._out = None
        self.written = self.read = 0
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class StreamWriter(ABC, Generic[R]):
    """Subclasses implement `entry` (encode one record) and `stream` (its stream key)."""

    what = "records"  # for log lines

    def __init__(
        self,
        redis: Redis,
        *,
        max_batch: int,
        max_buffer: int,
        linger_s: float,
        stream_maxlen: int,
        max_batch_bytes: int = 512 * 1024,
        max_buffer_bytes: int = 64 * 1024 * 1024,
        spill_dir: Path | None = None,
        spill_max_bytes: int = 256 * 1024 * 1024,
        metrics: WriterMetrics | None = None,
    ) -> None:
        self.redis = redis
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        self.max_buffer = max_buffer
        self.max_buffer_bytes = max_buffer_bytes
        self.linger_s = linger_s
        self.stream_maxlen = stream_maxlen
        self.metrics = metrics
        self.stats = WriterStats()
        self.writer_id = uuid.uuid4().hex
        self._seq = 0
        self._queue: deque[Entry] = deque()
        self._queued_bytes = 0
        self._unsent: deque[Batch] = deque()  # formed batches not known to be stored
        self._spilled_unread = 0
        self.spill: SpillFile | None = None
        if spill_dir is not None:
            name = f"{type(self).__name__.lower()}-{os.getpid()}-{self.writer_id[:8]}.spill"
            self.spill = SpillFile(spill_dir / name, spill_max_bytes)
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @abstractmethod
    def entry(self, record: R) -> Entry:
        """Encode one record (raises TypeError/ValueError when it cannot be)."""

    @abstractmethod
    def stream(self, group: str) -> str:
        """The stream key of an experiment."""

    def extra(self, pipe: Pipeline, batch: Batch) -> int:
        """Queue further idempotent commands for a batch (the decision log's event index);
        returns how many."""
        return 0

    def put(self, record: R) -> bool:
        """Queue one record; never waits. False: refused (unencodable) or dropped."""
        try:
            entry = self.entry(record)
        except (TypeError, ValueError) as exc:  # orjson.JSONEncodeError is a TypeError
            self.stats.unencodable += 1
            if self.metrics is not None and self.metrics.unencodable is not None:
                self.metrics.unencodable.inc()
            log.error("a %s record cannot be encoded and is not logged: %s", self.what, exc)
            return False
        self.stats.appended += 1
        spill = self.spill
        if spill is not None and spill.written:  # spilling: keep the order, append behind
            return self._spill(entry)
        if len(self._queue) >= self.max_buffer or (
            self._queued_bytes + len(entry.payload) > self.max_buffer_bytes
        ):
            if spill is not None:
                return self._spill(entry)
            dropped = self._queue.popleft()
            self._queued_bytes -= len(dropped.payload)
            self._dropped(1)
        self._queue.append(entry)
        self._queued_bytes += len(entry.payload)
        if not self._wakeup.is_set():
            self._wakeup.set()
        return True

    def _spill(self, entry: Entry) -> bool:
        assert self.spill is not None
        if not self.spill.append(entry):
            self._dropped(1)
            return False
        self.stats.spilled += 1
        self._spilled_unread += 1
        if self.metrics is not None and self.metrics.spill_bytes is not None:
            self.metrics.spill_bytes.set(self.spill.written)
        return True

    @property
    def pending(self) -> int:
        """Records not yet known to be stored (in memory, in unsent batches, spilled)."""
        unsent = sum(len(b.entries) for b in self._unsent)
        return len(self._queue) + unsent + self._spilled_unread

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
        while self.pending and time.monotonic() < deadline:
            if not await self.flush_once():
                await asyncio.sleep(_STOP_RETRY_S)
        if self.pending:
            log.error("shutting down with %d %s not flushed", self.pending, self.what)

    async def _run(self) -> None:
        backoff = _BACKOFF_FIRST_S
        while True:
            await self._wakeup.wait()
            # Let a batch gather: one pipeline per interval, not per record, keeps the
            # Redis client's work per record at a few microseconds under any load.
            await asyncio.sleep(self.linger_s)
            self._wakeup.clear()
            while self.pending:
                if await self.flush_once():
                    backoff = _BACKOFF_FIRST_S
                else:
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _BACKOFF_MAX_S)

    def _take(self) -> list[Entry]:
        """The next records in order, within one batch's bounds."""
        queue = self._queue
        taken: list[Entry] = []
        size = 0
        while queue and len(taken) < self.max_batch:
            nbytes = len(queue[0].payload)
            if taken and size + nbytes > self.max_batch_bytes:
                break
            entry = queue.popleft()
            self._queued_bytes -= nbytes
            taken.append(entry)
            size += nbytes
        spill = self.spill
        if not taken and spill is not None and spill.written:
            taken = spill.take(self.max_batch, self.max_batch_bytes)
            self._spilled_unread -= len(taken)
            if spill.unread <= 0:
                spill.reset()
            if self.metrics is not None and self.metrics.spill_bytes is not None:
                self.metrics.spill_bytes.set(spill.unread)
        return taken

    def _form_batches(self) -> None:
        # `_take` bounds the bytes of all of them together: each stream entry is within it.
        by_group: dict[str, Batch] = {}
        for entry in self._take():
            batch = by_group.get(entry.group)
            if batch is None:
                batch = by_group[entry.group] = Batch(entry.group, [])
            batch.entries.append(entry)
        self._unsent.extend(by_group.values())

    async def flush_once(self) -> bool:
        """Send the unsent batches (or the next ones); False if any is still unsent."""
        if not self._unsent:
            self._form_batches()
        if not self._unsent:
            return True
        batches = list(self._unsent)
        extras: list[int] = []
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for batch in batches:
                    if batch.seq == 0:
                        self._seq += 1
                        batch.seq = self._seq
                    pipe.eval(
                        BATCH_SCRIPT,
                        2,
                        self.stream(batch.group),
                        keys.log_writer_seq(batch.group, self.writer_id),
                        batch.seq,
                        _SEQ_TTL_S,
                        self.stream_maxlen,
                        BatchField.COUNT.value,
                        len(batch.entries),
                        BatchField.RECORDS.value,
                        batch.records(),
                    )
                    extras.append(self.extra(pipe, batch))
                results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            # Unknown which batches landed: all are re-sent with their numbers, in order.
            if self.metrics is not None and self.metrics.redis_up is not None:
                self.metrics.redis_up.set(0)
            self._failure(exc, len(batches))
            for batch in batches:
                batch.failures += 1
            if batches[0].failures >= _REFUSALS_BEFORE_SPLIT and await self._answers():
                await self._split_refused()
            self._report()
            return False
        if self.metrics is not None and self.metrics.redis_up is not None:
            self.metrics.redis_up.set(1)
        failed: list[Batch] = []
        outcomes = iter(results)
        for batch, extra_count in zip(batches, extras, strict=True):
            outcome = next(outcomes)
            for _ in range(extra_count):
                extra = next(outcomes)
                if isinstance(extra, Exception):  # the index is a help, not the record
                    log.warning("%s: an index write failed (%s)", self.what, extra)
            if isinstance(outcome, Exception):
                # An error reply: the script stopped before writing; a fresh number next time.
                batch.seq = 0
                batch.failures += 1
                failed.append(batch)
                continue
            if outcome == 0:
                self.stats.replayed += 1
            self.stats.flushed += len(batch.entries)
            self.stats.batches += 1
        self._unsent = deque(failed)
        if failed:
            self._failure(next(r for r in results if isinstance(r, Exception)), len(failed))
            for batch in failed:
                if batch.failures >= _REFUSALS_BEFORE_SPLIT:
                    self._split(batch)
        self._report()
        return not failed

    def _failure(self, exc: BaseException, batches: int) -> None:
        self.stats.flush_errors += 1
        if self.metrics is not None:
            self.metrics.flush_failures.inc()
        log.warning(
            "%s flush failed (%s); %d batches kept to retry", self.what, str(exc)[:200], batches
        )

    async def _answers(self) -> bool:
        try:
            await asyncio.wait_for(self.redis.ping(), timeout=1.0)
        except (RedisError, OSError, TimeoutError):
            return False
        return True

    async def _split_refused(self) -> None:
        """Redis answers PING but drops the connection on a batch: find it, split it.

        The server runs a pipeline in order and stops where it drops the connection, so a
        batch is stored exactly when this writer's stored number for its stream reached it.
        """
        keep: list[Batch] = []
        for batch in self._unsent:
            stored = await self._stored_seq(batch.group)
            if stored is None:
                return  # Redis went away again: retry as before
            if batch.seq <= stored:
                self.stats.replayed += 1
                self.stats.flushed += len(batch.entries)
                self.stats.batches += 1
            else:
                keep.append(batch)
        # None of these is stored: fresh numbers, in this order.
        self._unsent = deque(Batch(b.group, b.entries, 0, b.failures) for b in keep)
        if self._unsent:
            self._split(self._unsent[0])

    def _split(self, batch: Batch) -> None:
        """Halve a refused, unstored batch in place; a lone record refused again is dropped."""
        unsent = self._unsent
        at = unsent.index(batch)
        del unsent[at]
        if len(batch.entries) > 1:
            middle = len(batch.entries) // 2
            unsent.insert(at, Batch(batch.group, batch.entries[middle:]))
            unsent.insert(at, Batch(batch.group, batch.entries[:middle]))
            return
        if batch.failures < _REFUSALS_BEFORE_SPLIT + 1:
            unsent.insert(at, batch)
            return
        entry = batch.entries[0]
        self.stats.rejected += 1
        if self.metrics is not None and self.metrics.rejected is not None:
            self.metrics.rejected.inc()
        log.error(
            "Redis refuses the %s record %s of %s (%d bytes); it is dropped",
            self.what,
            entry.event_id,
            entry.group,
            len(entry.payload),
        )

    async def _stored_seq(self, group: str) -> int | None:
        try:
            raw = await self.redis.get(keys.log_writer_seq(group, self.writer_id))
        except (RedisError, OSError):
            return None
        return int(raw) if raw is not None else 0

    def _report(self) -> None:
        if self.metrics is not None:
            self.metrics.pending.set(self.pending)

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
