"""`banditgate router` on its own limits rank calls per client (429 + Retry-After)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import yaml

from tests.e2e.test_serve import free_port, ready
from tests.support import make_spec, wait_for

ROOT = Path(__file__).resolve().parents[2]
ROUTER = (sys.executable, "-m", "banditgate_app.cli", "router")


async def test_rank_calls_are_rate_limited(redis_url: str, name: str, tmp_path: Path) -> None:
    spec = make_spec(name, [("a", "http://127.0.0.1:9"), ("b", "http://127.0.0.1:9")])
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True)))
    port = free_port()
    env = {
        **os.environ,
        "BANDITGATE_REDIS_URL": redis_url,
        "BANDITGATE_EXPERIMENTS": name,
        "BANDITGATE_RATE_LIMIT_RANK_PER_S": "0.2",  # a burst of one, no refill during the test
    }
    process = subprocess.Popen(
        [*ROUTER, "-f", str(spec_file), "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_for(lambda: ready(base, process), timeout=60, every=0.2)
        statuses = []
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                async with http.post(
                    f"{base}/v1/experiments/{name}/rank", json={"context": {}}
                ) as response:
                    statuses.append(response.status)
                    if response.status == 429:
                        assert int(response.headers["retry-after"]) >= 1
        assert statuses == [200, 429, 429]
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
