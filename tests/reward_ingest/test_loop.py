"""The reward loop end to end: router decision, reward webhook, joiner, joined example."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson

from banditgate import keys
from banditgate.serve import create_serve_app
from banditgate.store import ExperimentStore
from reward_ingest.settings import IngestSettings
from reward_ingest.worker import Joiner
from tests.reward_ingest.conftest import decision, joined_examples, log_decisions, reward_spec
from tests.support import free_socket, make_spec, run_backend, serve_asgi, wait_for

ROOT = Path(__file__).resolve().parents[2]


async def test_router_decision_then_webhook_reward_then_joined(
    redis, redis_url, name, monkeypatch, data_dir
):
    monkeypatch.setenv("BANDITGATE_REDIS_URL", redis_url)
    monkeypatch.setenv("BANDITGATE_EXPERIMENTS", name)
    async with run_backend() as one, run_backend() as two:
        spec = make_spec(
            name,
            [("bert-1", one.url), ("bert-2", two.url)],
            reward={"window_s": 30, "aggregation": "earliest"},
        )
        await ExperimentStore(redis).put(spec)
        settings = IngestSettings(redis_url=redis_url, data_dir=data_dir, join_max_block_ms=50)
        stop = asyncio.Event()
        joiner = asyncio.create_task(
            Joiner(redis=redis, settings=settings, experiments=[name]).run(stop)
        )
        try:
            async with (
                serve_asgi(create_serve_app(with_control=False)) as url,
                aiohttp.ClientSession() as http,
            ):
                async with http.post(
                    f"{url}/endpoints/{name}/invocations",
                    data=orjson.dumps({"features": ["I love it!"]}),
                    headers={"content-type": "application/json"},
                ) as response:
                    assert response.status == 200
                    event_id = response.headers["x-banditgate-event-id"]
                    variant = response.headers["x-banditgate-variant"]
                # The reward names no experiment: the event index (or the resolver) finds it.
                async with http.post(
                    f"{url}/v1/events/{event_id}/reward", data=b'{"value": 1}'
                ) as response:
                    assert response.status == 202

                async def joined() -> bool:
                    return len(await joined_examples(redis, name)) == 1

                await wait_for(joined)
        finally:
            stop.set()
            await asyncio.wait_for(joiner, timeout=10)
    (example,) = await joined_examples(redis, name)
    assert example["decision"]["event_id"] == event_id
    assert example["decision"]["chosen"] == variant
    assert example["reward"] == 1.0 and example["rewarded"] is True


def _ingest(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "banditgate.cli", "ingest", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


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


def _stop(process: subprocess.Popen[bytes]) -> str:
    """SIGTERM: a graceful shutdown and a clean exit."""
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=30)
    errors = process.stderr.read().decode() if process.stderr else ""
    assert code == 0, errors
    assert "Application shutdown complete" in errors and "Traceback" not in errors, errors
    return errors


async def test_ingest_command_runs_webhook_joiner_and_exporter(
    redis, redis_url, name, tmp_path, clock
):
    await ExperimentStore(redis).put(reward_spec(name, window_s=60, aggregation="earliest"))
    await log_decisions(redis, [decision(name, "cli-1", clock.ms)])
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {
        **os.environ,
        "BANDITGATE_REDIS_URL": redis_url,
        "BANDITGATE_DATA_DIR": str(tmp_path),
        "BANDITGATE_EXPERIMENTS": name,
        "BANDITGATE_EXPORT_MAX_AGE_S": "0.2",
    }
    process = _ingest(env, port)
    try:
        url = f"http://127.0.0.1:{port}"
        await _until_up(url, process)
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
        _stop(process)
    (example,) = await joined_examples(redis, name)
    assert example["reward"] == 0.5
    assert (await redis.xpending(keys.joined(name), keys.EXPORTER_GROUP))["pending"] == 0


async def test_ingest_command_starts_an_embedded_redis(tmp_path):
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {k: v for k, v in os.environ.items() if k != "BANDITGATE_REDIS_URL"}
    env["BANDITGATE_DATA_DIR"] = str(tmp_path)
    process = _ingest(env, port)
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


async def test_workers_runner_starts_the_joiner_and_exporter(
    redis, redis_url, name, monkeypatch, tmp_path, clock
):
    from banditgate.workers import run_workers

    monkeypatch.setenv("BANDITGATE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BANDITGATE_EXPERIMENTS", name)
    monkeypatch.setenv("BANDITGATE_EXPORT_MAX_AGE_S", "0.1")
    await ExperimentStore(redis).put(reward_spec(name, window_s=60, aggregation="earliest"))
    await log_decisions(redis, [decision(name, "w-1", clock.ms)])
    await redis.xadd(keys.rewards(name), {"id": "w-1", "v": "0.5", "ts": clock.ms + 1})
    stop = asyncio.Event()
    runner = asyncio.create_task(run_workers(redis_url, only={"joiner", "exporter"}, stop=stop))

    async def exported() -> bool:
        return any((tmp_path / "export" / name).rglob("*.parquet"))

    try:
        await wait_for(exported, timeout=30)
    finally:
        stop.set()
        await asyncio.wait_for(runner, timeout=30)
        for sig in (signal.SIGTERM, signal.SIGINT):  # the runner's handlers, not the test's
            asyncio.get_running_loop().remove_signal_handler(sig)
    (example,) = await joined_examples(redis, name)
    assert example["reward"] == 0.5
