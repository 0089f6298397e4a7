"""Shadow mirroring: a share of the primary's requests is replayed to shadow arms, off the hot path.

The client only ever sees the primary's answer; its decision (one-hot on the
primary) carries the event id that rewards join to. Each mirrored call runs as
its own task, at most `max_inflight` at once; past that, mirrors are dropped
and counted rather than queued, so a slow or dead shadow costs the primary
nothing but a dictionary lookup. Results go to an in-memory queue that a
background task flushes to the experiment's shadow stream in batches, at most
one write per `linger_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import orjson
from redis.exceptions import RedisError

from banditgate import keys
from banditgate.errors import BackendError
from banditgate.events import ArmCall, ShadowResult, shadow_batch_fields
from banditgate.redis import Redis
from banditgate.spec import Arm, ShadowSpec
from banditgate.tasks import TaskGroup
from router.backends import Backend, BackendResponse

log = logging.getLogger(__name__)

_UNIT = 18446744073709551616.0


def mirror_fraction(event_id: str) -> float:
    """Where an event id falls in [0, 1): deterministic, so a mirroring decision can be replayed."""
    digest = hashlib.blake2b(f"shadow\x00{event_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _UNIT


@dataclass(frozen=True)
class ShadowPlan:
    primary: str
    shadows: tuple[str, ...]
    fraction: float
    compare_bodies: bool

    @classmethod
    def from_spec(cls, spec: ShadowSpec) -> ShadowPlan:
        return cls(spec.primary, tuple(spec.shadows), spec.percent / 100.0, spec.compare_bodies)

    def selects(self, event_id: str) -> bool:
        if self.fraction >= 1.0:
            return True
        if self.fraction <= 0.0:
            return False
        return mirror_fraction(event_id) < self.fraction


@dataclass
class MirrorStats:
    started: int = 0
    dropped: int = 0
    failed: int = 0
    recorded: int = 0
    flush_errors: int = 0


def same_body(primary: bytes, shadow: bytes) -> bool:
    """Equal bytes, or equal JSON documents (key order and spacing do not count)."""
    if primary == shadow:
        return True
    try:
        return bool(orjson.loads(primary) == orjson.loads(shadow))
    except orjson.JSONDecodeError:
        return False


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
    ) -> None:
        self.backend = backend
        self.redis = redis
        self.max_inflight = max_inflight
        self.timeout_s = timeout_s
        self.max_buffer = max_buffer
        self.stream_maxlen = stream_maxlen
        self.linger_s = linger_s
        self.stats = MirrorStats()
        self.calls = TaskGroup("shadow")
        self._results: deque[ShadowResult] = deque()
        self._wakeup = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None

    @property
    def inflight(self) -> int:
        return len(self.calls.tasks)

    def start(self) -> None:
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._run(), name="shadow-flusher")
            self._flusher.add_done_callback(_log_failure)

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
    ) -> bool:
        """Start one mirrored call unless `max_inflight` are already running; never waits."""
        if len(self.calls.tasks) >= self.max_inflight:
            self.stats.dropped += 1
            return False
        self.stats.started += 1
        coro = self._mirror(
            experiment, event_id, arm, url, body, headers, method, primary, primary_body
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
            result["same_body"] = response is not None and same_body(primary_body, response.body)
        self._append(result)

    def _append(self, result: ShadowResult) -> None:
        if len(self._results) >= self.max_buffer:
            self._results.popleft()
            self.stats.dropped += 1
        self._results.append(result)
        self._wakeup.set()

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            await self._wakeup.wait()
            # Results are not urgent: gather a batch rather than write to Redis per mirror.
            await asyncio.sleep(self.linger_s)
            self._wakeup.clear()
            while self._results:
                if await self.flush_once():
                    backoff = 0.05
                else:
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)

    async def flush_once(self, max_batch: int = 1000) -> bool:
        batch: list[ShadowResult] = []
        while self._results and len(batch) < max_batch:
            batch.append(self._results.popleft())
        if not batch:
            return True
        by_experiment: dict[str, list[ShadowResult]] = {}
        for result in batch:
            by_experiment.setdefault(result["experiment"], []).append(result)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for experiment, results in by_experiment.items():
                    pipe.xadd(
                        keys.shadow_results(experiment),
                        shadow_batch_fields(results),  # type: ignore[arg-type]
                        maxlen=self.stream_maxlen,
                        approximate=True,
                    )
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self.stats.flush_errors += 1
            log.warning("shadow result flush failed (%s); %d results requeued", exc, len(batch))
            self._results.extendleft(reversed(batch))
            return False
        self.stats.recorded += len(batch)
        return True

    async def stop(self, grace_s: float = 2.0) -> None:
        """Give mirrors in flight `grace_s` to finish, cancel the rest, flush the results."""
        await self.calls.wait_all(timeout=grace_s)
        await self.calls.cancel_all()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        deadline = time.monotonic() + grace_s
        while self._results and time.monotonic() < deadline:
            if not await self.flush_once():
                await asyncio.sleep(0.1)
        if self._results:
            log.error("shutting down with %d shadow results not flushed", len(self._results))


def _log_failure(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("task %s failed", task.get_name(), exc_info=exc)
