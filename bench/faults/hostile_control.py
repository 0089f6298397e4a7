"""Hostile clients against `banditgate control`: guessed keys, a 100 MB body, YAML bombs.

    .venv/bin/python bench/faults/hostile_control.py [--seconds 3]

Starts a private redis-server and `banditgate control` with an admin key on loopback,
then reports: wrong-key tries per second answered 403 (and how many were 429) from one
client with 16 connections; the status and the server's memory growth for a 100 MB JSON
body; the status for a YAML alias bomb and a 5,000-deep YAML document; reads without a key.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.experiments.test_limits import BOMB  # noqa: E402
from tests.faults import RedisServer  # noqa: E402
from tests.support import free_socket  # noqa: E402

KEY = "bench-admin-key"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bg-hostile-"))
    redis = RedisServer(work / "redis")
    redis.start()
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {**os.environ, "BANDITGATE_REDIS_URL": redis.url, "BANDITGATE_ADMIN_KEYS": KEY}
    control = subprocess.Popen(
        [sys.executable, "-m", "banditgate_app.cli", "control", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16)) as http:
            for _ in range(300):
                try:
                    async with http.get(f"{base}/health/ready") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            async with http.get(f"{base}/v1/experiments") as r:
                print(f"GET /v1/experiments without a key: {r.status}")
            counts: dict[int, int] = {}
            deadline = time.monotonic() + args.seconds

            async def guess(n: int) -> None:
                i = 0
                while time.monotonic() < deadline:
                    i += 1
                    headers = {"authorization": f"Bearer guess-{n}-{i}"}
                    async with http.get(f"{base}/v1/experiments", headers=headers) as r:
                        counts[r.status] = counts.get(r.status, 0) + 1

            await asyncio.gather(*(guess(n) for n in range(16)))
            total = sum(counts.values())
            print(
                f"wrong keys for {args.seconds:g}s: {total / args.seconds:.0f} tries/s answered, "
                f"{counts.get(403, 0) / args.seconds:.1f}/s checked (403), "
                f"{counts.get(429, 0)} refused unchecked (429)"
            )
            await asyncio.sleep(2.5)  # let the client's refused-key bucket refill
            before = rss_mb(control.pid)
            big = b"[" + b"1," * (50 * 1024 * 1024) + b"1]"
            headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
            started = time.monotonic()
            async with http.post(f"{base}/v1/experiments", data=big, headers=headers) as r:
                status = r.status
            print(
                f"100 MB JSON body: {status} in {time.monotonic() - started:.2f}s, "
                f"server memory {rss_mb(control.pid) - before:+.1f} MB"
            )
            yaml_headers = {**headers, "content-type": "application/yaml"}
            async with http.post(f"{base}/v1/experiments", data=BOMB, headers=yaml_headers) as r:
                print(f"YAML alias bomb: {r.status} {(await r.json())['error']['message']}")
            deep = b"a: " + b"[" * 5000 + b"]" * 5000
            async with http.post(f"{base}/v1/experiments", data=deep, headers=yaml_headers) as r:
                print(f"5,000-deep YAML: {r.status} {(await r.json())['error']['message']}")
    finally:
        control.send_signal(signal.SIGTERM)
        try:
            control.wait(timeout=30)
        except subprocess.TimeoutExpired:
            control.kill()
        redis.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    asyncio.run(main(parser.parse_args()))
