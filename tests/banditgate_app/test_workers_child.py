"""`serve`'s background workers child under SIGKILL: restarted, reported, never orphaned."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from banditgate.redis import Redis
from banditgate.supervisor import check_heartbeats
from banditgate_app.apps import serve_app
from banditgate_app.workers_child import (
    STATUS_FILE_VARIABLE,
    WorkersChild,
    WorkersStatus,
    read_status,
)
from tests.e2e.test_serve import free_port
from tests.support import make_spec, run_backend, serve_asgi, wait_for

SERVE = (sys.executable, "-m", "banditgate_app.cli", "serve")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (OSError, IndexError):
        return False
    return state != "Z"


async def _get(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.read()


async def _ready_body(base: str) -> dict[str, Any] | None:
    try:
        status, body = await _get(f"{base}/health/ready")
    except aiohttp.ClientError:
        return None
    document: dict[str, Any] = orjson.loads(body)
    document["http_status"] = status
    return document


async def test_a_sigkilled_workers_child_is_restarted_reported_and_dies_with_serve(
    redis: Redis, redis_url: str, name: str, tmp_path: Path
) -> None:
    async with run_backend() as a, run_backend() as b:
        spec = make_spec(name, [("a", a.url), ("b", b.url)])
        spec_file = tmp_path / "spec.yaml"
        spec_file.write_text(yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True)))
        port = free_port()
        env = {
            **os.environ,
            "BANDITGATE_REDIS_URL": redis_url,
            "BANDITGATE_EXPERIMENTS": name,
            "BANDITGATE_DATA_DIR": str(tmp_path / "data"),
        }
        serve = subprocess.Popen(
            [*SERVE, "-f", str(spec_file), "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        seen: dict[str, Any] = {}

        async def workers_running(restarts: int) -> bool:
            assert serve.poll() is None, "serve exited"
            body = await _ready_body(base)
            if body is None or body.get("workers", {}).get("status") != "running":
                return False
            seen.update(body)
            return bool(body["workers"]["restarts"] == restarts)

        try:
            await wait_for(lambda: workers_running(0), timeout=60, every=0.2)
            first = seen["workers"]["pid"]
            assert seen["http_status"] == 200
            assert _alive(first)
            await wait_for(lambda: _heartbeat_from(redis, first), timeout=20, every=0.2)

            os.kill(first, signal.SIGKILL)
            await wait_for(lambda: workers_running(1), timeout=30, every=0.1)
            second = seen["workers"]["pid"]
            assert second != first and _alive(second)
            assert seen["workers"]["last_exit_code"] == -signal.SIGKILL
            # A new child writes its own heartbeats.
            await wait_for(lambda: _heartbeat_from(redis, second), timeout=20, every=0.2)
            status, metrics = await _get(f"{base}/metrics")
            assert status == 200
            assert b"banditgate_workers_child_restarts_total 1\n" in metrics
            assert b"banditgate_workers_child_up 1\n" in metrics

            # serve SIGKILLed: the kernel takes the child down with it.
            serve.kill()
            serve.wait(timeout=10)

            async def child_gone() -> bool:
                return not _alive(second)

            await wait_for(child_gone, timeout=30, every=0.1)
        finally:
            if serve.poll() is None:
                serve.kill()
                serve.wait()


async def _heartbeat_from(redis: Redis, pid: int) -> bool:
    beats = await check_heartbeats(redis, ["joiner", "exporter", "trainer", "controller"])
    return all(beat is not None and beat["pid"] == pid for beat in beats.values())


async def test_a_child_that_keeps_dying_is_backed_off_and_reported_crash_looping(
    tmp_path: Path,
) -> None:
    status_file = tmp_path / "status.json"
    child = WorkersChild(
        status_file, args=("-c", "import sys; sys.exit(3)"), backoff_s=0.05, max_backoff_s=0.2
    )
    stopping = threading.Event()
    watcher = threading.Thread(target=child.watch, args=(stopping,), daemon=True)
    child.start()
    watcher.start()

    async def looping() -> bool:
        status = read_status(str(status_file))
        return status is not None and status.crash_looping

    try:
        await wait_for(looping, timeout=20, every=0.05)
    finally:
        stopping.set()
        watcher.join()
        child.stop()
    status = read_status(str(status_file))
    assert status is not None
    assert status.last_exit_code == 3
    assert status.restarts >= 2
    assert not status.running


async def test_serve_is_unready_while_its_workers_child_crash_loops(
    redis_url: str, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    status_file = tmp_path / "status.json"
    monkeypatch.setenv("BANDITGATE_REDIS_URL", redis_url)
    monkeypatch.setenv("BANDITGATE_EXPERIMENTS", name)
    monkeypatch.setenv(STATUS_FILE_VARIABLE, str(status_file))
    restarting = WorkersStatus(
        pid=7, running=False, restarts=1, exits_in_a_row=1, last_exit_code=-9
    )
    status_file.write_bytes(orjson.dumps(asdict(restarting)))
    async with serve_asgi(serve_app(with_ingest=False)) as url:
        status, body = await _get(f"{url}/health/ready")
        assert status == 200
        assert orjson.loads(body)["workers"] == {
            "status": "restarting",
            "pid": 7,
            "restarts": 1,
            "last_exit_code": -9,
        }
        looping = replace(restarting, restarts=3, exits_in_a_row=3)
        status_file.write_bytes(orjson.dumps(asdict(looping)))
        status, body = await _get(f"{url}/health/ready")
        assert status == 503
        document = orjson.loads(body)
        assert document["error"]["message"] == "background workers keep dying (last exit code -9)"
        assert document["workers"]["status"] == "crash-looping"
        status, metrics = await _get(f"{url}/metrics")
        assert b"banditgate_workers_child_up 0\n" in metrics
        assert b"banditgate_workers_child_restarts_total 3\n" in metrics
