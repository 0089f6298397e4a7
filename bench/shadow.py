"""Does shadow mirroring slow the primary? Primary latency with and without a shadow, one run.

Three processes: loopback backends (a primary, a fast shadow and a slow shadow),
one router (uvicorn, uvloop, httptools), and this client. Three experiments
on the same router and primary backend:

  plain        mode shadow with percent 0: the same code path, nothing mirrored
  shadow       every request also mirrored to the fast shadow
  shadow-slow  every request also mirrored to a shadow that answers after --slow-ms

Requests go in blocks of --block per experiment, the blocks rotating over the
three experiments until --requests are sent: within a block the router runs in
one condition only (a mirror's reply lands on the requests of its own
experiment), and drift on the machine hits all three alike. Latency is measured
at the client, from request start to the full response.

    python bench/shadow.py [--requests 6000] [--block 200] [--connections 1] [--slow-ms 50]

Uses BANDITGATE_REDIS_URL when set (the bench's experiments are deleted after),
else an embedded Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

# The project root before bench/ on the path: bench/router.py must not shadow the router package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EXPERIMENTS = ("plain", "shadow", "shadow-slow")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_backends(ports: list[int], slow_ms: float) -> None:
    from aiohttp import web

    body = orjson.dumps({"predicted_label": 1, "scores": [0.1, 0.9]})

    def app(delay_s: float) -> web.Application:
        async def handle(request: web.Request) -> web.Response:
            await request.read()
            if delay_s:
                await asyncio.sleep(delay_s)
            return web.Response(body=body, content_type="application/json")

        application = web.Application()
        application.router.add_post("/invocations", handle)
        return application

    async def main() -> None:
        runners = []
        for port, delay in zip(ports, (0.0, 0.0, slow_ms / 1000), strict=True):
            runner = web.AppRunner(app(delay), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            runners.append(runner)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        for runner in runners:
            await runner.cleanup()

    import uvloop

    uvloop.run(main())


def serve_router(port: int, redis_url: str) -> None:
    import uvicorn

    from router.app import create_app
    from router.settings import RouterSettings

    settings = RouterSettings(redis_url=redis_url, experiments=[f"bench-{e}" for e in EXPERIMENTS])
    uvicorn.run(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
    )


async def put_specs(redis_url: str, ports: list[int]) -> None:
    from banditgate.redis import connect
    from banditgate.spec import parse_spec
    from banditgate.store import ExperimentStore

    primary, fast, slow = (f"http://127.0.0.1:{p}" for p in ports)
    redis = connect(redis_url)
    try:
        store = ExperimentStore(redis)
        for experiment, shadow_url, percent in (
            ("plain", fast, 0),
            ("shadow", fast, 100),
            ("shadow-slow", slow, 100),
        ):
            await store.put(
                parse_spec(
                    {
                        "name": f"bench-{experiment}",
                        "mode": "shadow",
                        "arms": [
                            {"name": "primary", "url": primary, "protocol": "sagemaker"},
                            {"name": "shadow", "url": shadow_url, "protocol": "sagemaker"},
                        ],
                        "shadow": {"primary": "primary", "shadows": ["shadow"], "percent": percent},
                    }
                )
            )
    finally:
        await redis.aclose()


async def drop_specs(redis_url: str) -> None:
    from banditgate.redis import connect
    from banditgate.store import ExperimentStore

    redis = connect(redis_url)
    try:
        store = ExperimentStore(redis)
        for experiment in EXPERIMENTS:
            with contextlib.suppress(Exception):
                await store.delete(f"bench-{experiment}")
    finally:
        await redis.aclose()


async def wait_ready(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{url}/health/ready") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError("the router did not become ready")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(
    url: str, requests: int, block: int, connections: int, router_pid: int
) -> tuple[dict[str, list[float]], dict[str, float], dict[str, float]]:
    """Latencies (ms) per experiment, the seconds its blocks took and the router's CPU seconds."""
    latencies: dict[str, list[float]] = {e: [] for e in EXPERIMENTS}
    busy: dict[str, float] = dict.fromkeys(EXPERIMENTS, 0.0)
    cpu: dict[str, float] = dict.fromkeys(EXPERIMENTS, 0.0)
    payload = orjson.dumps({"features": ["A great phone, I love it!"]})
    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one_block(experiment: str, n: int) -> None:
            counter = iter(range(n))
            target = f"{url}/endpoints/bench-{experiment}/invocations"

            async def worker() -> None:
                for _ in counter:
                    started = time.perf_counter()
                    async with session.post(target, data=payload, headers=headers) as response:
                        await response.read()
                        if response.status != 200:
                            raise RuntimeError(f"{experiment}: HTTP {response.status}")
                    latencies[experiment].append((time.perf_counter() - started) * 1000)

            started, cpu_before = time.perf_counter(), cpu_seconds(router_pid)
            await asyncio.gather(*(worker() for _ in range(connections)))
            # Let the block's mirrors finish, so their cost is counted in this block.
            await asyncio.sleep(0.1)
            cpu[experiment] += cpu_seconds(router_pid) - cpu_before
            busy[experiment] += time.perf_counter() - started - 0.1

        sent = 0
        rotation = 0
        while sent < requests:
            experiment = EXPERIMENTS[rotation % len(EXPERIMENTS)]
            n = min(block, requests - sent)
            await one_block(experiment, n)
            sent += n
            rotation += 1
    return latencies, busy, cpu


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


async def run(args: argparse.Namespace, redis_url: str) -> dict[str, Any]:
    backend_ports = [free_port() for _ in range(3)]
    router_port = free_port()
    here = str(Path(__file__).resolve())
    env = {**os.environ, "BANDITGATE_LOG_LEVEL": "WARNING"}
    backends = subprocess.Popen(
        [
            sys.executable,
            here,
            *(["--pin"] if args.pin else []),
            "--role",
            "backends",
            "--ports",
            *map(str, backend_ports),
            "--slow-ms",
            str(args.slow_ms),
        ],
        env=env,
    )
    router: subprocess.Popen[bytes] | None = None
    try:
        await put_specs(redis_url, backend_ports)
        router = subprocess.Popen(
            [
                sys.executable,
                here,
                *(["--pin"] if args.pin else []),
                "--role",
                "router",
                "--port",
                str(router_port),
                "--redis-url",
                redis_url,
            ],
            env=env,
        )
        url = f"http://127.0.0.1:{router_port}"
        await wait_ready(url)
        await load(url, args.warmup, max(args.warmup // 3, 1), args.connections, router.pid)
        latencies, busy, cpu = await load(
            url, args.requests, args.block, args.connections, router.pid
        )
    finally:
        for process in (router, backends):
            if process is not None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=20)
        await drop_specs(redis_url)
    plain = latencies["plain"]
    result: dict[str, Any] = {
        "requests": args.requests,
        "block": args.block,
        "connections": args.connections,
        "pinned": args.pin,
        "slow_ms": args.slow_ms,
    }
    for experiment in EXPERIMENTS:
        values = latencies[experiment]
        result[experiment] = {
            "n": len(values),
            "p50_ms": round(statistics.median(values), 3),
            "p99_ms": round(quantile(values, 0.99), 3),
            "rps": round(len(values) / busy[experiment], 1),
            "router_cpu_us": round(cpu[experiment] / len(values) * 1e6, 1),
        }
    for experiment in ("shadow", "shadow-slow"):
        values = latencies[experiment]
        result[experiment]["p50_ratio"] = round(
            statistics.median(values) / statistics.median(plain), 3
        )
        result[experiment]["p99_ratio"] = round(quantile(values, 0.99) / quantile(plain, 0.99), 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=6000, help="Measured, all experiments.")
    parser.add_argument(
        "--block", type=int, default=200, help="Requests per block of one experiment."
    )
    parser.add_argument("--warmup", type=int, default=300, help="Requests before measuring.")
    parser.add_argument("--connections", type=int, default=1, help="Concurrent client connections.")
    parser.add_argument("--slow-ms", type=float, default=50.0, help="Delay of the slow shadow.")
    parser.add_argument("--role", choices=["client", "backends", "router"], default="client")
    parser.add_argument("--ports", type=int, nargs="*", default=[])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--redis-url", default="")
    parser.add_argument(
        "--pin", action="store_true", help="Router on CPU 0; backends and client on CPU 1."
    )
    args = parser.parse_args()
    if args.pin:
        os.sched_setaffinity(0, {0} if args.role == "router" else {1})
    if args.role == "backends":
        serve_backends(args.ports, args.slow_ms)
        return
    if args.role == "router":
        serve_router(args.port, args.redis_url)
        return
    embedded = None
    redis_url = os.environ.get("BANDITGATE_REDIS_URL", "")
    if not redis_url:
        from banditgate.redis import EmbeddedRedis

        embedded = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="bench-shadow-")))
        redis_url = embedded.url
    try:
        result = asyncio.run(run(args, redis_url))
    finally:
        if embedded is not None:
            embedded.close()
    print(
        f"requests={result['requests']} block={result['block']} "
        f"connections={result['connections']} slow shadow={result['slow_ms']:g} ms"
    )
    print(
        f"{'experiment':<12} {'n':>6} {'req/s':>8} {'cpu us':>7} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'p50 x':>7} {'p99 x':>7}"
    )
    for experiment in EXPERIMENTS:
        row = result[experiment]
        ratios = (
            f"{row['p50_ratio']:>7.3f} {row['p99_ratio']:>7.3f}"
            if "p50_ratio" in row
            else f"{'1':>7} {'1':>7}"
        )
        print(
            f"{experiment:<12} {row['n']:>6} {row['rps']:>8.0f} {row['router_cpu_us']:>7.0f} "
            f"{row['p50_ms']:>8.3f} "
            f"{row['p99_ms']:>8.3f} {ratios}"
        )
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
