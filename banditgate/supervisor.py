"""Background workers in one process, each restarted with backoff and seen through a heartbeat.

A worker is `async def run(redis, *, stop) -> None`: it returns once `stop` is set
and its in-flight work is finished or handed back. If it raises (or returns while
`stop` is unset), the supervisor logs it, waits (1 s, doubling up to a minute) and
starts it again. While a worker runs, a heartbeat key (`keys.worker_heartbeat`) is
renewed every `heartbeat_s` with a time to live of three intervals, so
`banditgate workers --check` (and a container health check) tells a live worker
from a dead or crash-looping one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import orjson
from redis.exceptions import RedisError

from banditgate import keys
from banditgate.redis import Redis, mget_values
from banditgate.tasks import TaskGroup

log = logging.getLogger(__name__)


class Worker(Protocol):
    def __call__(self, redis: Redis, *, stop: asyncio.Event) -> Awaitable[None]: ...


@dataclass
class WorkerState:
    name: str
    starts: int = 0
    crashes: int = 0
    running: bool = False
    last_error: str = ""
    started_at: float = 0.0


@dataclass
class Supervisor:
    redis: Redis
    workers: Mapping[str, Worker]
    host: str = field(default_factory=socket.gethostname)
    heartbeat_s: float = 5.0
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    states: dict[str, WorkerState] = field(default_factory=dict)

    async def run(self, stop: asyncio.Event, *, grace_s: float = 30.0) -> None:
        group = TaskGroup("supervisor")
        for name, worker in self.workers.items():
            self.states[name] = WorkerState(name)
            group.spawn(self._keep(name, worker, stop), name)
        group.spawn(self._beat(stop), "heartbeat")
        log.info("workers started: %s", ", ".join(self.workers))
        await stop.wait()
        log.info("stopping workers")
        await group.wait_all(timeout=grace_s)
        await group.cancel_all()
        with contextlib.suppress(RedisError, OSError):
            await self.redis.delete(*(keys.worker_heartbeat(self.host, n) for n in self.workers))

    async def _keep(self, name: str, worker: Worker, stop: asyncio.Event) -> None:
        state = self.states[name]
        backoff = self.backoff_s
        while not stop.is_set():
            state.starts += 1
            state.running = True
            state.started_at = time.monotonic()
            try:
                await worker(self.redis, stop=stop)
                if stop.is_set():
                    return
                state.last_error = "returned before it was asked to stop"
                log.error("worker %s %s; restarting in %.0fs", name, state.last_error, backoff)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                state.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("worker %s failed; restarting in %.0fs", name, backoff)
            finally:
                state.running = False
            state.crashes += 1
            # A worker that ran a while before failing starts again quickly; a crash loop backs off.
            if time.monotonic() - state.started_at > self.max_backoff_s:
                backoff = self.backoff_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=backoff)
            backoff = min(backoff * 2, self.max_backoff_s)

    async def _beat(self, stop: asyncio.Event) -> None:
        ttl_ms = int(self.heartbeat_s * 3000)
        while not stop.is_set():
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for state in self.states.values():
                        key = keys.worker_heartbeat(self.host, state.name)
                        if state.running:
                            pipe.set(key, self._beat_value(state), px=ttl_ms)
                        else:
                            pipe.delete(key)
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                log.warning("worker heartbeat not written: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.heartbeat_s)

    def _beat_value(self, state: WorkerState) -> bytes:
        return orjson.dumps(
            {
                "pid": os.getpid(),
                "ts_ms": int(time.time() * 1000),
                "starts": state.starts,
                "crashes": state.crashes,
                "last_error": state.last_error,
            }
        )


async def check_heartbeats(
    redis: Redis, names: list[str], host: str | None = None
) -> dict[str, dict[str, object] | None]:
    """Each worker's last heartbeat on `host` (this host by default), or None if it has none."""
    host = host or socket.gethostname()
    values = await mget_values(redis, [keys.worker_heartbeat(host, name) for name in names])
    return {
        name: (orjson.loads(value) if value is not None else None)
        for name, value in zip(names, values, strict=True)
    }
