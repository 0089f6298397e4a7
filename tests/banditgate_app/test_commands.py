"""The process commands as users run them: `ingest`, `workers` (supervised, with heartbeats)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson

from banditgate import contracts, keys
from banditgate.metrics import MULTIPROCESS_DIR_VARIABLE
from banditgate.redis import Redis
from banditgate.registry import PolicyRegistry
from banditgate.store import ExperimentStore
from banditgate.supervisor import Supervisor, check_heartbeats
from banditgate_app.workers import select
from tests.reward_ingest.conftest import (
    Clock,
    decision,
    joined_examples,
    log_decisions,
    reward_spec,
)
from tests.router.test_metrics import scrape
from tests.router.test_policy_serving import trained_model
from tests.support import free_socket, make_spec, wait_for

ROOT = Path(__file__).resolve().parents[2]


def _command(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "banditgate_app.cli", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _port() -> int:
    sock = free_socket()
    port = int(sock.getsockname()[1])
    sock.close()
    return port


async def _until_up(url: str, process: subprocess.Popen[bytes]) -> None:
    async def up() -> bool:
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.post(f"{url}/v1/rewards", data=b"{}") as response,
            ):
                return response.status in (400, 422)
        except aiohttp.ClientConnectionError:
            return False

    await wait_for(up, timeout=30, every=0.1)


def _stop(process: subprocess.Popen[bytes], *, http: bool = True) -> str:
    """SIGTERM: a graceful shutdown and a clean exit."""
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=30)
    errors = process.stderr.read().decode() if process.stderr else ""
    assert code == 0, errors
    assert "Traceback" not in errors, errors
    if http:
        assert "Application shutdown complete" in errors, errors
    return errors


async def test_ingest_and_workers_commands_run_webhook_joiner_and_exporter(
    redis: Redis, redis_url: str, name: str, tmp_path: Path
) -> None:
    clock = Clock()
    await ExperimentStore(redis).put(reward_spec(name, window_s=60, aggregation="earliest"))
    await log_decisions(redis, [decision(name, "cli-1", clock.ms)])
    port = _port()
    env = {
        **os.environ,
        "BANDITGATE_REDIS_URL": redis_url,
        "BANDITGATE_DATA_DIR": str(tmp_path),
        "BANDITGATE_EXPERIMENTS": name,
        "BANDITGATE_EXPORT_MAX_AGE_S": "0.2",
    }
    webhook = _command(env, "ingest", "--port", str(port))
    background = _command(env, "workers", "--only", "joiner,exporter")
    try:
        url = f"http://127.0.0.1:{port}"
        await _until_up(url, webhook)
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{url}/v1/rewards", data=orjson.dumps({"event_id": "cli-1", "value": 0.5})
            ) as response,
        ):
            assert response.status == 202

        async def exported() -> bool:
            return any((tmp_path / "export" / name).rglob("*.parquet"))

        await wait_for(exported, timeout=30, every=0.1)
    finally:
        _stop(webhook)
        _stop(background, http=False)
    (example,) = await joined_examples(redis, name)
    assert example["reward"] == 0.5
    assert (await redis.xpending(keys.joined(name), contracts.EXPORTER_GROUP))["pending"] == 0


async def test_ingest_command_starts_an_embedded_redis(tmp_path: Path) -> None:
    port = _port()
    env = {k: v for k, v in os.environ.items() if k != "BANDITGATE_REDIS_URL"}
    env["BANDITGATE_DATA_DIR"] = str(tmp_path)
    process = _command(env, "ingest", "--port", str(port))
    try:
        url = f"http://127.0.0.1:{port}"
        await _until_up(url, process)
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{url}/v1/rewards",
                data=orjson.dumps({"event_id": "e", "value": 1, "experiment": "nope"}),
            ) as response,
        ):
            assert response.status == 404
    finally:
        errors = _stop(process)
    # The embedded server was stopped too (its socket is gone), not left running.
    socket_path = errors.split("embedded redis started at ", 1)[1].split()[0]
    assert not Path(socket_path).exists()


async def test_supervisor_runs_the_joiner_and_exporter(
    redis: Redis, name: str, monkeypatch, tmp_path: Path
) -> None:
    clock = Clock()
    monkeypatch.setenv("BANDITGATE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BANDITGATE_EXPERIMENTS", name)
    monkeypatch.setenv("BANDITGATE_EXPORT_MAX_AGE_S", "0.1")
    await ExperimentStore(redis).put(reward_spec(name, window_s=60, aggregation="earliest"))
    await log_decisions(redis, [decision(name, "w-1", clock.ms)])
    await redis.xadd(keys.rewards(name), {"id": "w-1", "v": "0.5", "ts": clock.ms + 1})
    stop = asyncio.Event()
    supervisor = Supervisor(redis, select({"joiner", "exporter"}), host=name)
    runner = asyncio.create_task(supervisor.run(stop))

    async def exported() -> bool:
        return any((tmp_path / "export" / name).rglob("*.parquet"))

    try:
        await wait_for(exported, timeout=30)
    finally:
        stop.set()
        await asyncio.wait_for(runner, timeout=30)
    (example,) = await joined_examples(redis, name)
    assert example["reward"] == 0.5
    # A stopped supervisor takes its heartbeats with it.
    assert await check_heartbeats(redis, ["joiner", "exporter"], host=name) == {
        "joiner": None,
        "exporter": None,
    }


async def test_a_failing_worker_is_restarted_and_its_heartbeat_tells(
    redis: Redis, name: str
) -> None:
    runs: list[int] = []
    crashed = asyncio.Event()

    async def flaky(redis: Redis, *, stop: asyncio.Event) -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise RuntimeError(f"boom {len(runs)}")
        crashed.set()
        await stop.wait()

    async def steady(redis: Redis, *, stop: asyncio.Event) -> None:
        await stop.wait()

    stop = asyncio.Event()
    supervisor = Supervisor(
        redis, {"flaky": flaky, "steady": steady}, host=name, heartbeat_s=0.05, backoff_s=0.01
    )
    runner = asyncio.create_task(supervisor.run(stop))
    try:
        await asyncio.wait_for(crashed.wait(), timeout=10)

        async def both_beating() -> bool:
            beats = await check_heartbeats(redis, ["flaky", "steady"], host=name)
            return all(beat is not None for beat in beats.values())

        await wait_for(both_beating, timeout=10)
        beats = await check_heartbeats(redis, ["flaky", "steady", "absent"], host=name)
    finally:
        stop.set()
        await asyncio.wait_for(runner, timeout=10)
    assert len(runs) == 3
    flaky_beat = beats["flaky"]
    assert flaky_beat is not None
    assert flaky_beat["crashes"] == 2 and flaky_beat["starts"] == 3
    assert flaky_beat["last_error"] == "RuntimeError: boom 2"
    assert beats["steady"] is not None and beats["steady"]["crashes"] == 0
    assert beats["absent"] is None


def test_workers_check_exits_nonzero_without_live_workers(redis_url: str, name: str) -> None:
    env = {**os.environ, "BANDITGATE_REDIS_URL": redis_url}
    result = subprocess.run(
        [sys.executable, "-m", "banditgate_app.cli", "workers", "--only", "joiner", "--check"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert b"joiner: dead" in result.stdout


async def test_router_workers_add_up_their_counters_on_metrics(
    redis: Redis, redis_url: str, name: str, tmp_path: Path
) -> None:
    """`--workers 2`: whichever worker a scrape reaches, it reports both workers' swaps."""
    spec = make_spec(name, [("a", "http://127.0.0.1:9"), ("b", "http://127.0.0.1:9")])
    await ExperimentStore(redis).put(spec)
    port = _port()
    log_path = tmp_path / "router.log"
    env = {**os.environ, "BANDITGATE_REDIS_URL": redis_url, "BANDITGATE_EXPERIMENTS": name}
    env.pop(MULTIPROCESS_DIR_VARIABLE, None)
    command = ["router", "--port", str(port), "--workers", "2"]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "banditgate_app.cli", *command],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        async def both_started() -> bool:
            assert process.poll() is None, log_path.read_text()
            return log_path.read_text().count("Application startup complete") == 2

        await wait_for(both_started, timeout=60, every=0.1)
        await PolicyRegistry(redis).publish(name, trained_model(spec, best="b"), learner="vw")

        async def both_swapped() -> bool:
            return await scrape(url, "banditgate_router_policy_swaps") == 2.0

        await wait_for(both_swapped, timeout=30, every=0.1)
        for _ in range(4):  # any worker answers with the sum
            assert await scrape(url, "banditgate_router_policy_swaps") == 2.0
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    errors = log_path.read_text()
    assert code == 0 and "Traceback" not in errors, errors
