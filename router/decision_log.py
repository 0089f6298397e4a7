"""Decisions go to an in-memory queue; a background task flushes them to Redis in batches.

A decision reaches Redis within `flush_interval_s` (5 ms) of its request.
A request never waits on Redis. While Redis is unreachable the queue holds up to
`max_buffer` decisions and retries; past that the oldest are dropped and counted
(the queue, retries and bound are `router/stream_writer.py`'s). Each flush is one
stream entry per experiment, plus the event index that lets a reward find its
experiment by event id alone.
"""

from __future__ import annotations

from redis.asyncio.client import Pipeline

from banditgate import keys
from banditgate.events import Decision, decision_batch_fields, event_index_bucket
from banditgate.redis import Redis
from banditgate.scripts import lua_source
from router.metrics import WriterMetrics
from router.stream_writer import StreamWriter

# Indexes one flush's event ids in one call (see the script for why).
INDEX_SCRIPT = lua_source("router", "event_index.lua")


class DecisionLog(StreamWriter[tuple[Decision, int]]):
    what = "decisions"

    def __init__(
        self,
        redis: Redis,
        *,
        max_batch: int = 2000,
        max_buffer: int = 500_000,
        flush_interval_s: float = 0.005,
        stream_maxlen: int = 2_000_000,
        index_events: bool = True,
        metrics: WriterMetrics | None = None,
    ) -> None:
        super().__init__(
            redis,
            max_batch=max_batch,
            max_buffer=max_buffer,
            linger_s=flush_interval_s,
            metrics=metrics,
        )
        self.stream_maxlen = stream_maxlen
        self.index_events = index_events

    def append(self, decision: Decision, index_ttl_s: int) -> None:
        """Log one decision; its event id stays indexed for `index_ttl_s`. Never waits."""
        self.put((decision, index_ttl_s))

    def write(self, pipe: Pipeline, batch: list[tuple[Decision, int]]) -> None:
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
