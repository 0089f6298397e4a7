"""Which experiment logged an event id: the router's event index, newest bucket first."""

from __future__ import annotations

from collections.abc import Iterable

from banditgate import keys
from banditgate.events import event_index_bucket
from banditgate.redis import Redis

# Buckets asked per round trip: the first round covers the last ten minutes, where nearly
# every reward's decision is; later rounds widen so a long window costs few round trips.
_FIRST_CHUNK = 3
_MAX_CHUNK = 96


async def lookup(
    redis: Redis, event_ids: Iterable[str], *, newest_ms: int, oldest_ms: int
) -> dict[str, str]:
    """Experiment of each event id indexed between `oldest_ms` and `newest_ms` (newest wins)."""
    todo = list(dict.fromkeys(event_ids))
    found: dict[str, str] = {}
    bucket = event_index_bucket(newest_ms)
    last = event_index_bucket(oldest_ms)
    chunk = _FIRST_CHUNK
    while todo and bucket >= last:
        buckets = list(range(bucket, max(bucket - chunk, last - 1), -1))
        async with redis.pipeline(transaction=False) as pipe:
            for b in buckets:
                pipe.hmget(keys.event_index(b), todo)
            answers = await pipe.execute()
        for values in answers:
            for event_id, value in zip(todo, values, strict=True):
                if value is not None and event_id not in found:
                    found[event_id] = value.decode()
        todo = [event_id for event_id in todo if event_id not in found]
        bucket -= len(buckets)
        chunk = min(chunk * 4, _MAX_CHUNK)
    return found
