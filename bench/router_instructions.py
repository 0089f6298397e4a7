"""CPU instructions per request of the router and of a bare pass-through proxy (callgrind).

    python bench/router_instructions.py [--small 300] [--large 1300]

Instruction counts do not move with other load on the machine, unlike req/s on a
shared 2-core box. Each proxy runs under `valgrind --tool=callgrind` twice, with
`small` and `large` requests (8 concurrent, 1,000 distinct review bodies); the
difference divided by (large - small) is the cost of one request, start-up and
shutdown cancelling out. Three proxies are measured: a bare one on aiohttp (the
reference), a bare one on the router's own HTTP client (bare-lean), and the
router; router minus bare-lean is the cost of deciding and logging. The router's flush interval is scaled by valgrind's
slowdown so decision batches are as large as at full speed. bare/router is the throughput ratio a CPU-bound proxy
would reach on one core.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import importlib.util  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_router", ROOT / "bench" / "router.py")
assert _spec is not None and _spec.loader is not None
_bench_router = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_bench_router)
EXPERIMENT, free_port, prepare, wait_port = (
    _bench_router.EXPERIMENT,
    _bench_router.free_port,
    _bench_router.prepare,
    _bench_router.wait_port,
)

from banditgate.redis import EmbeddedRedis  # noqa: E402
from banditgate_app.demo.reviews import review_pool  # noqa: E402


async def drive(port: int, path: str, count: int, concurrency: int = 8) -> None:
    bodies = [orjson.dumps({"features": [r.text]}) for r in review_pool(1000, seed=7)]
    limit = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as http:

        async def one(i: int) -> None:
            async with (
                limit,
                http.post(
                    f"http://127.0.0.1:{port}{path}",
                    data=bodies[i % len(bodies)],
                    headers={"content-type": "application/json"},
                ) as response,
            ):
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"status {response.status}")

        await asyncio.gather(*(one(i) for i in range(count)))


def instructions(command: list[str], env: dict[str, str], port: int, path: str, count: int) -> int:
    out = Path(tempfile.mkdtemp()) / "callgrind.out"
    process = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *command],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, timeout=300)
        time.sleep(1.0)
        asyncio.run(drive(port, path, count))
        time.sleep(0.5)
    finally:
        process.send_signal(2)
        process.wait(timeout=300)
    match = re.search(r"^summary:\s+(\d+)", out.read_text(), re.M)
    if match is None:
        raise RuntimeError("no callgrind summary")
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", type=int, default=300)
    parser.add_argument("--large", type=int, default=1300)
    parser.add_argument("--exploration", default="cover")
    parser.add_argument("--only", choices=["bare", "bare-lean", "router"], default=None)
    parser.add_argument("--no-context", action="store_true", help="spec without context features")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("needs valgrind")
    embedded = None
    url = os.environ.get("BANDITGATE_REDIS_URL")
    if not url:
        embedded = EmbeddedRedis(Path(tempfile.mkdtemp()) / "redis")
        url = embedded.url
    backend_port = free_port()
    backend = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "fast_backend.py"), str(backend_port)]
    )
    try:
        wait_port(backend_port)
        asyncio.run(
            prepare(url, f"http://127.0.0.1:{backend_port}", args.exploration, not args.no_context)
        )
        env = {
            **os.environ,
            "BANDITGATE_REDIS_URL": url,
            "BANDITGATE_EXPERIMENTS": EXPERIMENT,
            "BARE_UPSTREAM": f"http://127.0.0.1:{backend_port}",
            "PYTHONPATH": str(ROOT),
            "BANDITGATE_LOG_LEVEL": "WARNING",
            # valgrind slows the process ~30x: scale the flush interval so batches
            # hold as many decisions as they do at full speed with the 5 ms default.
            "BANDITGATE_FLUSH_INTERVAL_S": "0.15",
        }
        per_request: dict[str, float] = {}
        for target, app, path in (
            ("bare", ["bench.bare_proxy:app"], "/invocations"),
            ("bare-lean", ["bench.bare_proxy:lean_app"], "/invocations"),
            (
                "router",
                ["--factory", "router.app:create_app"],
                f"/endpoints/{EXPERIMENT}/invocations",
            ),
        ):
            if args.only and target != args.only:
                continue
            counts = []
            for count in (args.small, args.large):
                port = free_port()
                command = [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "--loop",
                    "uvloop",
                    "--http",
                    "httptools",
                    "--no-access-log",
                    "--log-level",
                    "warning",
                    "--port",
                    str(port),
                    *app,
                ]
                counts.append(instructions(command, env, port, path, count))
            per_request[target] = (counts[1] - counts[0]) / (args.large - args.small)
            print(f"{target}: {per_request[target]:,.0f} instructions per request", flush=True)
    finally:
        backend.terminate()
        backend.wait()
        if embedded is not None:
            embedded.close()
    if len(per_request) == 3:
        print(
            f"bare (aiohttp) / router instruction ratio: {per_request['bare'] / per_request['router']:.3f}"
        )
        print(
            f"bare-lean / router instruction ratio: {per_request['bare-lean'] / per_request['router']:.3f}"
        )
        extra = per_request["router"] - per_request["bare-lean"]
        print(f"deciding and logging cost {extra:,.0f} instructions per request")


if __name__ == "__main__":
    main()
