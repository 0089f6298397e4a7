"""Shadow mirroring: a share of the primary's requests is replayed to shadow arms, off the hot path.

The client only ever sees the primary's answer; its decision (one-hot on the
primary) carries the event id that rewards join to. Each mirrored call runs as
its own task, at most `max_inflight` at once; past that, mirrors are dropped
and counted rather than queued, so a slow or dead shadow costs the primary
nothing but a dictionary lookup. Results go to the experiment's shadow stream
through a batched writer (`router/stream_writer.py`), at most one write per
`linger_s`; while Redis is away it holds up to `max_buffer` results, then drops
the oldest and counts them (or spills them to a file, given `spill_dir`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import orjson

from banditgate import keys
from banditgate.errors import BackendError
from banditgate.events import ArmCall, ShadowResult
from banditgate.pointers import resolve
from banditgate.policy import unit_fraction
from banditgate.redis import Redis
from banditgate.spec import Arm, ShadowSpec
from banditgate.tasks import TaskGroup
from router.backends import Backend, BackendResponse
from router.metrics import RouterMetrics, WriterMetrics
from router.stream_writer import Entry, StreamWriter

log = logging.getLogger(__name__)


def mirror_fraction(event_id: str) -> float:
    """Where an event id falls in [0, 1): deterministic, so a mirroring decision can be replayed."""
    return unit_fraction(f"shadow\x00{event_id}")


@dataclass(frozen=True)
class ShadowPlan:
    primary: str
    shadows: tuple[str, ...]
    fraction: float
    compare_bodies: bool
    pointer: str | None = None

    @classmethod
    def from_spec(cls, spec: ShadowSpec) -> ShadowPlan:
        return cls(
            spec.primary,
            tuple(spec.shadows),
            spec.percent / 100.0,
            spec.compare_bodies or spec.compare_pointer is not None,
            spec.compare_pointer,
        )

    def selects(self, event_id: str) -> bool:
        if self.fraction >= 1.0:
            return True
        if self.fraction <= 0.0:
            return False
        return mirror_fraction(event_id) < self.fraction


@dataclass
class MirrorStats:
    started: int = 0
    dropped: int = 0  # not started: `max_inflight` were running
    failed: int = 0


class ShadowResults(StreamWriter[ShadowResult]):
    what = "shadow results"

    def __init__(
        self,
        redis: Redis,
        *,
        max_batch: int = 1000,
        max_buffer: int = 100_000,
        linger_s: float = 0.05,
        stream_maxlen: int = 1_000_000,
        spill_dir: Path | None = None,
        metrics: WriterMetrics | None = None,
    ) -> None:
        super().__init__(
            redis,
            max_batch=max_batch,
            max_buffer=max_buffer,
            linger_s=linger_s,
            stream_maxlen=stream_maxlen,
            spill_dir=spill_dir,
            metrics=metrics,
        )

    def entry(self, record: ShadowResult) -> Entry:
        return Entry(
            record["experiment"], record["event_id"], record["ts_ms"], 0, orjson.dumps(record)
        )

    def stream(self, group: str) -> str:
        return keys.shadow_results(group)


_ABSENT = object()


def same_body(primary: bytes, shadow: bytes, pointer: str | None = None) -> bool:
    """Equal bytes, or equal JSON documents (key order and spacing do not count); with a
    pointer, equal values at that pointer in both (absent in either: not equal)."""
    if pointer is None and primary == shadow:
        return True
    try:
        ours, theirs = orjson.loads(primary), orjson.loads(shadow)
    except orjson.JSONDecodeError:
        return False
    if pointer is None:
        return bool(ours == theirs)
    if pointer == "":
        return bool(ours == theirs)
    value = resolve(ours, pointer, _ABSENT)
    return value is not _ABSENT and bool(value == resolve(theirs, pointer, _ABSENT))


class ShadowMirror:
    def __init__(
        self,
        *,
        backend: Backend,
        redis: Redis,
        max_inflight: int = 256,
        timeout_s: float = 10.0,
        max_buffer: int = 100_000,
        stream_maxlen: int = 1_000_000,
        linger_s: float = 0.05,
        metrics: RouterMetrics | None = None,
    ) -> None:
        self.backend = backend
        self.metrics = metrics
        self.redis = redis
        self.max_inflight = max_inflight
        self.timeout_s = timeout_s
        self.stats = MirrorStats()
        self.calls = TaskGroup("shadow")
        self.results = ShadowResults(
            redis,
            max_buffer=max_buffer,
            linger_s=linger_s,
            stream_maxlen=stream_maxlen,
            metrics=metrics.shadow if metrics is not None else None,
        )

    @property
    def inflight(self) -> int:
        return len(self.calls.tasks)

    def start(self) -> None:
        self.results.start()

    def submit(
        self,
        experiment: str,
        event_id: str,
        arm: Arm,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        method: str,
        primary: ArmCall,
        primary_body: bytes | None,
        pointer: str | None = None,
    ) -> bool:
        """Start one mirrored call unless `max_inflight` are already running; never waits."""
        if len(self.calls.tasks) >= self.max_inflight:
            self.stats.dropped += 1
            if self.metrics is not None:
                self.metrics.mirrors_dropped.inc()
            return False
        self.stats.started += 1
        coro = self._mirror(
            experiment, event_id, arm, url, body, headers, method, primary, primary_body, pointer
        )
        self.calls.spawn(coro, arm.name)
        return True

    async def _mirror(
        self,
        experiment: str,
        event_id: str,
        arm: Arm,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        method: str,
        primary: ArmCall,
        primary_body: bytes | None,
        pointer: str | None,
    ) -> None:
        started = time.perf_counter()
        shadow: ArmCall
        response: BackendResponse | None = None
        try:
            response = await self.backend.send(
                arm, url, body, headers, method=method, timeout_s=arm.timeout_s or self.timeout_s
            )
            shadow = {
                "arm": arm.name,
                "status": response.status,
                "latency_ms": round(response.latency_ms, 3),
            }
        except BackendError as exc:
            self.stats.failed += 1
            latency = round((time.perf_counter() - started) * 1000, 3)
            shadow = {
                "arm": arm.name,
                "status": exc.status,
                "latency_ms": latency,
                "error": exc.message,
            }
        result: ShadowResult = {
            "event_id": event_id,
            "experiment": experiment,
            "ts_ms": int(time.time() * 1000),
            "primary": primary,
            "shadow": shadow,
        }
        if primary_body is not None:
            result["same_body"] = response is not None and same_body(
                primary_body, response.body, pointer
            )
        self.results.put(result)

    async def stop(self, grace_s: float = 2.0) -> None:
        """Give mirrors in flight `grace_s` to finish, cancel the rest, flush the results."""
        await self.calls.wait_all(timeout=grace_s)
        await self.calls.cancel_all()
        await self.results.stop(timeout_s=grace_s)
