"""Decisions go to an in-memory queue; a background task flushes them to Redis in batches.

A decision reaches Redis within `flush_interval_s` (5 ms) of its request.
A request never waits on Redis. Each decision is encoded when it is logged; one that
cannot be is counted and logged, and the request is unaffected. The queue, its bounds
in records and bytes, the spill file, replay without duplicates and the refusal of a
batch Redis will not take are `router/stream_writer.py`'s. Each flush is one stream
entry per experiment, plus the event index that lets a reward find its experiment by
event id alone.
"""

from __future__ import annotations

from pathlib import Path

import orjson
from redis.asyncio.client import Pipeline

from banditgate import keys
from banditgate.events import Decision, event_index_bucket
from banditgate.redis import Redis
from banditgate.scripts import lua_source
from router.metrics import WriterMetrics
from router.stream_writer import Batch, Entry, StreamWriter

# Indexes one flush's event ids in one call (see the script for why).
INDEX_SCRIPT = lua_source("router", "event_index.lua")


class DecisionLog(StreamWriter[tuple[Decision, int]]):
    what = "decisions"

    def __init__(
        self,
        redis: Redis,
        *,
        max_batch: int = 2000,
        max_batch_bytes: int = 512 * 1024,
        max_buffer: int = 500_000,
        max_buffer_bytes: int = 64 * 1024 * 1024,
        spill_dir: Path | None = None,
        spill_max_bytes: int = 256 * 1024 * 1024,
        flush_interval_s: float = 0.005,
        stream_maxlen: int = 2_000_000,
        index_events: bool = True,
        metrics: WriterMetrics | None = None,
    ) -> None:
        super().__init__(
            redis,
            max_batch=max_batch,
            max_batch_bytes=max_batch_bytes,
            max_buffer=max_buffer,
            max_buffer_bytes=max_buffer_bytes,
            spill_dir=spill_dir,
            spill_max_bytes=spill_max_bytes,
            linger_s=flush_interval_s,
            stream_maxlen=stream_maxlen,
            metrics=metrics,
        )
        self.index_events = index_events

    def append(self, decision: Decision, index_ttl_s: int) -> bool:
        """Log one decision; its event id stays indexed for `index_ttl_s`. Never waits.

        False: not logged (it cannot be encoded, or the log is full); counted and logged."""
        return self.put((decision, index_ttl_s))

    def entry(self, record: tuple[Decision, int]) -> Entry:
        decision, ttl = record
        return Entry(
            decision["experiment"],
            decision["event_id"],
            decision["ts_ms"],
            ttl,
            orjson.dumps(decision),
        )

    def stream(self, group: str) -> str:
        return keys.decisions(group)

    def extra(self, pipe: Pipeline, batch: Batch) -> int:
        """Index the batch's event ids (idempotent: a replay rewrites the same fields)."""
        if not self.index_events:
            return 0
        index: dict[int, list[str]] = {}
        ttl: dict[int, int] = {}
        for entry in batch.entries:
            bucket = event_index_bucket(entry.ts_ms)
            index.setdefault(bucket, []).append(entry.event_id)
            ttl[bucket] = max(ttl.get(bucket, 0), entry.ttl)
        buckets = sorted(index)
        for bucket in buckets:
            pipe.eval(
                INDEX_SCRIPT,
                1,
                keys.event_index(bucket),
                "\n".join(index[bucket]),
                batch.group,
                ttl[bucket],
            )
        return len(buckets)
