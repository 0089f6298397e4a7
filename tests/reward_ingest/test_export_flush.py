"""`export flush` under a dead exporter: it returns only once every joined example is in a closed file."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pyarrow.parquet as pq
from redis.exceptions import ResponseError

from banditgate import contracts, keys
from reward_ingest.export_worker import Exporter
from tests.reward_ingest.conftest import Clock
from tests.reward_ingest.test_export import ROOT, joined_run, parquet_files
from tests.support import Control, wait_for


async def test_flush_takes_over_what_a_sigkilled_exporter_held(
    redis, redis_url, control: Control, name, clock: Clock, settings
) -> None:
    n = 300
    await joined_run(redis, name, clock, settings, n=n)
    root = settings.data_dir / "export" / name
    env = {
        **os.environ,
        "BANDITGATE_REDIS_URL": redis_url,
        "BANDITGATE_DATA_DIR": str(settings.data_dir),
        "BANDITGATE_EXPERIMENTS": name,
        "BANDITGATE_EXPORT_MAX_AGE_S": "3600",
    }
    child = subprocess.Popen(
        [sys.executable, "-m", "banditgate_app.cli", "workers", "--only", "exporter"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    async def holding_everything() -> bool:
        assert child.poll() is None
        try:
            summary = await redis.xpending(keys.joined(name), contracts.EXPORTER_GROUP)
        except ResponseError:  # no group yet
            return False
        return bool(summary["pending"] == n and list(root.rglob("*.inprogress")))

    try:
        await wait_for(holding_everything, timeout=60, every=0.1)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert parquet_files(root) == []  # its open files died with it

    fast = settings.model_copy(update={"export_takeover_idle_ms": 200})
    exporter = Exporter(redis=redis, settings=fast, experiments=[name], consumer="exp-new")
    stop = asyncio.Event()
    task = asyncio.create_task(exporter.run(stop))
    try:
        await asyncio.sleep(0.3)  # the dead consumer has been silent for the takeover time
        status, outcome = await control.call(
            "POST", "/v1/export/flush", {"experiment": name, "timeout_s": 30}
        )
        assert status == 200, outcome
        assert outcome["complete"] is True and outcome["unexported"] == 0, outcome
        assert sum(len(pq.read_table(path)) for path in parquet_files(root)) == n
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


async def test_flush_with_no_exporter_is_not_complete_while_examples_wait(
    redis, control: Control, name, clock: Clock, settings
) -> None:
    await joined_run(redis, name, clock, settings, n=20)
    status, outcome = await control.call("POST", "/v1/export/flush", {"experiment": name})
    assert status == 200
    assert outcome["exporters"] == 0
    assert outcome["complete"] is False and outcome["unexported"] == 20
