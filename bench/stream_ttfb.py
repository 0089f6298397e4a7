"""Added time to first byte of InvokeEndpointWithResponseStream, against the streaming arm direct.

    python bench/stream_ttfb.py [--requests 2000] [--rounds 3]

A raw backend answers every request chunked: one token at once, then four more and the
end. A keep-alive client sends requests one at a time and times each from the request's
last byte to the first byte of the response body: the first token from the arm direct,
the first PayloadPart event through the router. Rounds interleave the two; the added
p50/p99 is the median over rounds of (router - direct).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from banditgate.redis import EmbeddedRedis, connect  # noqa: E402
from banditgate.spec import parse_spec  # noqa: E402
from banditgate.store import ExperimentStore  # noqa: E402
from bench.router import free_port, wait_port  # noqa: E402

EXPERIMENT = "bench-stream"

BACKEND = """
import asyncio, sys
import httptools, uvloop

HEAD = b"HTTP/1.1 200 OK\\r\\nContent-Type: text/plain\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n"
FIRST = b"5\\r\\nHello\\r\\n"
REST = b"".join(b"1\\r\\n" + bytes([c]) + b"\\r\\n" for c in b"!!!!") + b"0\\r\\n\\r\\n"

class Protocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
    def data_received(self, data):
        self.parser.feed_data(data)
    def on_message_complete(self):
        self.transport.write(HEAD + FIRST)
        asyncio.get_running_loop().call_soon(self.transport.write, REST)

async def main(port):
    server = await asyncio.get_running_loop().create_server(Protocol, "127.0.0.1", port)
    await server.serve_forever()

uvloop.run(main(int(sys.argv[1])))
"""


async def prepare(url: str, backend_url: str) -> None:
    redis = connect(url)
    try:
        await ExperimentStore(redis).put(
            parse_spec(
                {
                    "name": EXPERIMENT,
                    "arms": [
                        {"name": "llm-1", "url": backend_url, "protocol": "sagemaker"},
                        {"name": "llm-2", "url": backend_url, "protocol": "sagemaker"},
                    ],
                    "context": {"text": "inputs"},
                    "policy": {"learner": "vw"},
                }
            )
        )
    finally:
        await redis.aclose()


async def ttfbs(port: int, path: str, count: int) -> list[float]:
    """Sequential requests on one connection; ms from sent to the first body byte."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = b'{"inputs": "Tell me a story"}'
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    out: list[float] = []
    for _ in range(count):
        writer.write(request)
        await writer.drain()
        sent = time.perf_counter()
        await reader.readuntil(b"\r\n\r\n")
        size_line = await reader.readline()  # the first chunk's size: a body byte arrived
        out.append((time.perf_counter() - sent) * 1000)
        size = int(size_line.strip(), 16)
        await reader.readexactly(size + 2)
        while size:
            size = int((await reader.readline()).strip(), 16)
            await reader.readexactly(size + 2)
    writer.close()
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    embedded = None
    url = os.environ.get("BANDITGATE_REDIS_URL")
    if not url:
        embedded = EmbeddedRedis(Path(tempfile.mkdtemp()) / "redis")
        url = embedded.url
    backend_port, router_port = free_port(), free_port()
    backend_url = f"http://127.0.0.1:{backend_port}"
    env = {
        **os.environ,
        "BANDITGATE_REDIS_URL": url,
        "BANDITGATE_EXPERIMENTS": EXPERIMENT,
        "PYTHONPATH": str(ROOT),
        "BANDITGATE_LOG_LEVEL": "WARNING",
    }
    processes: list[subprocess.Popen[bytes]] = []
    rounds: list[tuple[list[float], list[float]]] = []
    try:
        asyncio.run(prepare(url, backend_url))
        processes.append(
            subprocess.Popen([sys.executable, "-c", BACKEND, str(backend_port)], env=env)
        )
        processes.append(
            subprocess.Popen(
                [
                    *(sys.executable, "-m", "uvicorn", "--loop", "uvloop", "--http", "httptools"),
                    *("--no-access-log", "--log-level", "warning", "--host", "127.0.0.1"),
                    *("--port", str(router_port), "--factory", "router.app:create_app"),
                ],
                env=env,
                cwd=ROOT,
            )
        )
        wait_port(backend_port)
        wait_port(router_port)
        stream_path = f"/endpoints/{EXPERIMENT}/invocations-response-stream"
        asyncio.run(ttfbs(router_port, stream_path, 200))  # warm up
        for number in range(args.rounds):
            direct = asyncio.run(ttfbs(backend_port, "/invocations", args.requests))
            routed = asyncio.run(ttfbs(router_port, stream_path, args.requests))
            rounds.append((direct, routed))
            print(
                f"round {number + 1}: TTFB p50 direct {percentile(direct, 0.5):.3f} ms, "
                f"router {percentile(routed, 0.5):.3f} ms; p99 direct "
                f"{percentile(direct, 0.99):.3f} ms, router {percentile(routed, 0.99):.3f} ms",
                flush=True,
            )
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=20)
        if embedded is not None:
            embedded.close()
    for q, label in ((0.5, "p50"), (0.99, "p99")):
        added = statistics.median(percentile(r, q) - percentile(d, q) for d, r in rounds)
        print(f"added TTFB {label}: {added:.3f} ms (median over {args.rounds} rounds)")


if __name__ == "__main__":
    main()
