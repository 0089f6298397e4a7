"""Background workers in one process: joiner, exporter, trainer, rollout controller.

Each worker module exposes `async def run(redis, *, stop: asyncio.Event) -> None`
that returns once `stop` is set and its in-flight work is finished or handed back.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal

from banditgate.redis import connect
from banditgate.tasks import TaskGroup

log = logging.getLogger(__name__)

WORKERS = (
    ("joiner", "reward_ingest.worker"),
    ("exporter", "reward_ingest.export_worker"),
    ("trainer", "trainer.worker"),
    ("controller", "experiments.controller"),
)


async def run_workers(
    url: str, *, only: set[str] | None = None, stop: asyncio.Event | None = None
) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    redis = connect(url)
    group = TaskGroup("workers")
    try:
        for name, module_name in WORKERS:
            if only is not None and name not in only:
                continue
            module = importlib.import_module(module_name)
            group.spawn(module.run(redis, stop=stop), name)
            log.info("%s started", name)
        await stop.wait()
        log.info("stopping workers")
        await group.wait_all(timeout=30)
        await group.cancel_all()
    finally:
        await redis.aclose()
