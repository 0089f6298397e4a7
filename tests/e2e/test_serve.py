"""`banditgate serve` as users run it: a real process, several workers on one port."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import yaml

from banditgate.registry import PolicyRegistry
from tests.router.conftest import logged_decisions
from tests.router.test_policy_serving import trained_model
from tests.support import make_spec, run_backend, wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def ready(base: str, process: subprocess.Popen[bytes]) -> bool:
    assert process.poll() is None, "serve exited"
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{base}/health/ready") as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def test_serve_with_two_workers_swaps_a_published_policy_in_every_worker(
    redis, redis_url, name, tmp_path: Path
):
    async with run_backend() as a, run_backend() as b:
        spec = make_spec(name, [("a", a.url), ("b", b.url)])
        spec_file = tmp_path / "spec.yaml"
        spec_file.write_text(
            yaml.safe_dump(spec.model_dump(mode="json", by_alias=True, exclude_none=True))
        )
        port = free_port()
        env = {
            **os.environ,
            "BANDITGATE_REDIS_URL": redis_url,
            "BANDITGATE_EXPERIMENTS": name,
            "BANDITGATE_DATA_DIR": str(tmp_path / "data"),
        }
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "banditgate_app.cli",
                "serve",
                "-f",
                str(spec_file),
                "--port",
                str(port),
                "--workers",
                "2",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            await wait_for(lambda: ready(base, process), timeout=60, every=0.2)
            await PolicyRegistry(redis).publish(
                name, trained_model(spec, best="b"), learner="vw", source="test"
            )
            # Each request on a fresh connection lands on either worker; once every one
            # answers with version 1, both workers have swapped.
            await wait_for(lambda: _all_serve_version(base, name, 1), timeout=20, every=0.1)
            before = len(await logged_decisions(redis, name))
            await wait_for(lambda: _all_serve_version(base, name, 1), timeout=20, every=0.1)
            await wait_for(lambda: _logged(redis, name, before + 20), timeout=20)
        finally:
            process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(process.wait, 30)
        assert process.returncode == 0
    after = (await logged_decisions(redis, name))[before:]
    assert len(after) >= 20 and {d["policy_version"] for d in after} == {1}


async def _all_serve_version(base: str, name: str, version: int) -> bool:
    results = []
    for _ in range(20):
        connector = aiohttp.TCPConnector(force_close=True)
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            http.post(f"{base}/v1/experiments/{name}/rank", json={"context": {}}) as response,
        ):
            results.append((await response.json())["policy_version"])
    return set(results) == {version}


async def _logged(redis, name, n) -> bool:  # type: ignore[no-untyped-def]
    return len(await logged_decisions(redis, name)) >= n
