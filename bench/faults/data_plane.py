"""Data-plane faults under steady load, counted: what clients saw, what was lost.

    python bench/faults/data_plane.py [--seconds 6] [--concurrency 8] [--only NAME ...]

Each scenario starts its own redis-server on a free port, two loopback backends (arms
of an A/B experiment, 50/50) and a router in this process (uvicorn, the production
protocol), drives it with `--concurrency` closed-loop clients sending SageMaker
invocations with their own inference ids, injects one fault, and then counts:

- availability: the share of requests answered 2xx;
- accepted: decisions the router made (a response carrying X-Banditgate-Event-Id);
- lost / duplicated: accepted decisions missing from, or more than once in, the
  decisions stream once the router has flushed (a retry's failed first attempt is
  logged under its own id and counted apart);
- for a backend that processes and then resets: requests it processed against
  requests the clients sent it (a proxy that re-sends runs them twice).

Redis faults: killed and restarted with AOF (appendfsync always), killed and
restarted empty (what Redis itself had stored before the kill is lost with it; the
router's part is everything accepted after), frozen (SIGSTOP) past the client's
socket timeout. Arm faults: one arm hangs, one refuses connections, one resets after
processing. The output is the Markdown table of RELIABILITY.md's data-plane section.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import uvicorn
from redis.exceptions import RedisError

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from banditgate import keys  # noqa: E402
from banditgate.events import decode_decision_batch  # noqa: E402
from banditgate.http_protocol import GuardedHttpToolsProtocol  # noqa: E402
from banditgate.redis import Redis, connect  # noqa: E402
from banditgate.spec import parse_spec  # noqa: E402
from banditgate.store import ExperimentStore  # noqa: E402
from router.app import RouterApp, create_app  # noqa: E402
from router.settings import RouterSettings  # noqa: E402

EXPERIMENT = "faults"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    def __init__(self, directory: Path, *extra: str) -> None:
        self.directory = directory
        self.extra = extra
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is not installed"
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--dir", str(self.directory), *self.extra]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def signal(self, sig: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, sig)


class Arm:
    """A loopback model server: answers, hangs, refuses, or processes and then resets."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.processed = 0
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port or 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def refuse(self) -> None:
        """Stop listening and drop every connection: new ones are refused."""
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        served_here = 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                if self.mode == "hang":
                    await reader.read()  # until the router gives up on it
                    return
                self.processed += 1
                served_here += 1
                if self.mode == "reset-after" and served_here % 2 == 0:
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                    writer.transport.abort()  # processed, never answered
                    return
                body = b'{"predicted_label": 1}'
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                    + str(len(body)).encode()
                    + b"\r\n\r\n"
                    + body
                )
                await writer.drain()
        finally:
            self.writers.discard(writer)


@dataclass
class Load:
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    accepted: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    sent_to: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: int = 0


async def drive(url: str, seconds: float, concurrency: int, pause_s: float) -> Load:
    load = Load()
    deadline = time.monotonic() + seconds
    counter = iter(range(10**9))
    timeout = aiohttp.ClientTimeout(total=15)

    async def client(http: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            event_id = f"r{next(counter)}"
            started = time.perf_counter()
            try:
                async with http.post(
                    f"{url}/endpoints/{EXPERIMENT}/invocations",
                    data=b'{"features": ["fine"]}',
                    headers={
                        "content-type": "application/json",
                        "X-Amzn-SageMaker-Inference-Id": event_id,
                    },
                ) as response:
                    await response.read()
                    load.statuses[response.status] += 1
                    logged_id = response.headers.get("X-Banditgate-Event-Id")
                    if logged_id is not None:
                        load.accepted.append(logged_id)
                        load.sent_to[response.headers.get("X-Banditgate-Variant", "")] += 1
            except (aiohttp.ClientError, TimeoutError):
                load.errors += 1
            load.latencies.append(time.perf_counter() - started)
            await asyncio.sleep(pause_s)  # steady load, not a saturating one

    async with aiohttp.ClientSession(timeout=timeout) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    return load


@contextlib.asynccontextmanager
async def serve(app: RouterApp) -> AsyncIterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app,
        lifespan="on",
        log_level="error",
        access_log=False,
        loop="none",
        http=GuardedHttpToolsProtocol,
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()


async def again(call: Callable[[], Awaitable[Any]]) -> Any:
    """The bench's own reads, over a connection the fault may have broken."""
    for attempt in range(20):
        try:
            return await call()
        except (RedisError, OSError):
            if attempt == 19:
                raise
            await asyncio.sleep(0.1)


async def logged_ids(redis: Redis) -> collections.Counter[str]:
    ids: collections.Counter[str] = collections.Counter()
    entries = await again(lambda: redis.xrange(keys.decisions(EXPERIMENT)))
    for _, fields in entries:
        for decision in decode_decision_batch(fields):
            ids[decision["event_id"]] += 1
    return ids


@dataclass
class Scenario:
    name: str
    fault: str
    inject: Callable[[dict[str, Any]], Awaitable[None]]
    recover: Callable[[dict[str, Any]], Awaitable[None]] | None = None
    redis_args: tuple[str, ...] = ("--appendonly", "no")
    arm_timeout_s: float | None = None
    health_path: str | None = None
    seconds: float | None = None
    recover_at: float = 0.5  # share of the run


async def run(
    scenario: Scenario, seconds: float, concurrency: int, pause_s: float
) -> dict[str, Any]:
    servers: list[RedisServer] = []
    try:
        return await _run(scenario, seconds, concurrency, pause_s, servers)
    finally:
        for server in servers:  # never leave a redis-server behind, even when interrupted
            if server.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    server.signal(signal.SIGCONT)
            server.kill()


async def _run(
    scenario: Scenario,
    seconds: float,
    concurrency: int,
    pause_s: float,
    servers: list[RedisServer],
) -> dict[str, Any]:
    seconds = scenario.seconds or seconds
    with tempfile.TemporaryDirectory(prefix="bg-faults-") as tmp:
        redis_server = RedisServer(Path(tmp), *scenario.redis_args)
        servers.append(redis_server)
        redis_server.start()
        arms = [Arm(), Arm()]
        for arm in arms:
            await arm.start()
        redis = connect(redis_server.url, socket_timeout=2, socket_connect_timeout=0.5)
        extra: dict[str, Any] = {}
        if scenario.arm_timeout_s:
            extra["timeout_s"] = scenario.arm_timeout_s
        if scenario.health_path:
            extra["health_path"] = scenario.health_path
        spec = parse_spec(
            {
                "name": EXPERIMENT,
                "mode": "ab",
                "arms": [
                    {"name": "a", "url": arms[0].url, "protocol": "sagemaker", **extra},
                    {"name": "b", "url": arms[1].url, "protocol": "sagemaker"},
                ],
            }
        )
        await ExperimentStore(redis).put(spec)
        app = create_app(
            RouterSettings(
                redis_url=redis_server.url, experiments=[EXPERIMENT], data_dir=Path(tmp) / "data"
            )
        )
        context = {"redis": redis_server, "arms": arms, "app": app}
        async with serve(app) as url:
            load_task = asyncio.create_task(drive(url, seconds, concurrency, pause_s))
            await asyncio.sleep(1.0)
            context["client"] = redis
            await scenario.inject(context)
            if scenario.recover is not None:
                await asyncio.sleep(max(seconds * scenario.recover_at - 1.0, 0.5))
                await scenario.recover(context)
            load = await load_task
            assert app.log is not None
            deadline = time.monotonic() + 60
            while app.log.pending and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            restored = await again(lambda: ExperimentStore(redis).find(EXPERIMENT)) is not None
        ids = await logged_ids(redis)
        await redis.aclose()
        redis_server.kill()
        for arm in arms:
            with contextlib.suppress(Exception):
                await arm.refuse()
    total = sum(load.statuses.values()) + load.errors
    ok = sum(n for status, n in load.statuses.items() if 200 <= status < 300)
    accepted = collections.Counter(load.accepted)
    client_ids = set(accepted)
    lost_ids = [i for i in client_ids if ids[i] == 0]
    lost_with_redis = 0
    stored_before: collections.Counter[str] | None = context.get("stored_before")
    if stored_before is not None:
        # What Redis had stored when it was killed without persistence went with its
        # data; everything else the router accepted must be in the new stream.
        lost_with_redis = sum(1 for i in lost_ids if stored_before[i])
        lost_ids = [i for i in lost_ids if not stored_before[i]]
    duplicated = sum(n - 1 for i, n in ids.items() if n > 1)
    attempts = sum(1 for i in ids if i.endswith("~1"))
    latencies = sorted(load.latencies)
    return {
        "scenario": scenario.name,
        "fault": scenario.fault,
        "requests": total,
        "availability": ok / total if total else 0.0,
        "statuses": dict(sorted(load.statuses.items())),
        "client_errors": load.errors,
        "accepted": len(client_ids),
        "lost": len(lost_ids),
        "lost_with_redis": lost_with_redis,
        "duplicated": duplicated,
        "retry_attempts_logged": attempts,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else 0.0,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000 if latencies else 0.0,
        "processed_by_arm_a": arms[0].processed,
        "sent_to_arm_a": load.sent_to.get("a", 0),
        "spec_restored": restored,
        "seconds": seconds,
        "rate": total / seconds,
    }


async def _kill_redis(ctx: dict[str, Any]) -> None:
    ctx["redis"].kill()


async def _kill_redis_noting_what_it_stored(ctx: dict[str, Any]) -> None:
    # Writes paused (reads go on): the snapshot is exactly what the kill takes away.
    await ctx["client"].execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
    ctx["stored_before"] = await logged_ids(ctx["client"])
    ctx["redis"].kill()


async def _restart_redis(ctx: dict[str, Any]) -> None:
    ctx["redis"].start()


async def _freeze_redis(ctx: dict[str, Any]) -> None:
    ctx["redis"].signal(signal.SIGSTOP)


async def _thaw_redis(ctx: dict[str, Any]) -> None:
    ctx["redis"].signal(signal.SIGCONT)


async def _hang_arm(ctx: dict[str, Any]) -> None:
    ctx["arms"][0].mode = "hang"


async def _refuse_arm(ctx: dict[str, Any]) -> None:
    await ctx["arms"][0].refuse()


async def _reset_after(ctx: dict[str, Any]) -> None:
    ctx["arms"][0].mode = "reset-after"


SCENARIOS = [
    Scenario(
        "redis-kill-restart-aof",
        "Redis killed, restarted with its AOF (appendfsync always)",
        _kill_redis,
        _restart_redis,
        redis_args=("--appendonly", "yes", "--appendfsync", "always"),
    ),
    Scenario(
        "redis-restart-empty",
        "Redis killed, restarted empty (no persistence)",
        _kill_redis_noting_what_it_stored,
        _restart_redis,
    ),
    Scenario(
        "redis-freeze",
        "Redis frozen (SIGSTOP) 4 s, past the client's 2 s socket timeout",
        _freeze_redis,
        _thaw_redis,
    ),
    Scenario(
        "arm-hangs",
        "one of two arms hangs (arm timeout 1 s)",
        _hang_arm,
        arm_timeout_s=1.0,
        seconds=20,  # detection costs what is in flight to it: a longer window shows the rest
    ),
    Scenario(
        "arm-hangs-checked",
        "one of two arms hangs (arm timeout 1 s; health_path set, so no request probes it)",
        _hang_arm,
        arm_timeout_s=1.0,
        health_path="/ping",
        seconds=20,
    ),
    Scenario("arm-refuses", "one of two arms refuses connections (process gone)", _refuse_arm),
    Scenario(
        "arm-resets-after-processing",
        "one arm processes every 2nd request on a connection, then resets it",
        _reset_after,
    ),
]


def table(rows: list[dict[str, Any]], concurrency: int) -> str:
    out = [
        "| fault | load | what clients saw | what was lost |",
        "|---|---|---|---|",
    ]
    for r in rows:
        statuses = ", ".join(f"{n} x {s}" for s, n in r["statuses"].items())
        saw = (
            f"{r['availability'] * 100:.2f}% 2xx of {r['requests']:,} ({statuses}); "
            f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.0f} ms"
        )
        if r["retry_attempts_logged"]:
            saw += f"; {r['retry_attempts_logged']} retried on the other arm"
        lost = f"{r['lost']} of {r['accepted']:,} accepted decisions lost, {r['duplicated']} duplicated"
        if r["lost_with_redis"]:
            lost += f" ({r['lost_with_redis']} stored before the kill went with Redis's data)"
        if r["scenario"] == "redis-restart-empty":
            lost += "; spec written back" if r["spec_restored"] else "; spec NOT restored"
        if r["scenario"] == "arm-resets-after-processing":
            lost += (
                f"; arm a processed {r['processed_by_arm_a']:,} requests, "
                f"answered {r['sent_to_arm_a']:,} (none run twice)"
            )
        load = f"{concurrency} clients, {r['rate']:.0f} req/s, {r['seconds']:g} s"
        out.append(f"| {r['fault']} | {load} | {saw} | {lost} |")
    return "\n".join(out)


async def main_async(args: argparse.Namespace) -> None:
    rows = []
    for scenario in SCENARIOS:
        if args.only and scenario.name not in args.only:
            continue
        seconds = args.seconds
        if scenario.name == "redis-freeze":
            scenario.seconds = seconds + 2
        if scenario.name.startswith("arm-hangs") and args.hang_seconds:
            scenario.seconds = args.hang_seconds
        row = await run(scenario, seconds, args.concurrency, args.pause_s)
        print(row, flush=True)
        rows.append(row)
    print()
    print(table(rows, args.concurrency))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--only", nargs="*", default=[])
    parser.add_argument("--hang-seconds", type=float, default=0.0, help="arm-hangs run length")
    parser.add_argument(
        "--pause-s", type=float, default=0.01, help="each client's pause between requests"
    )
    args = parser.parse_args()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
