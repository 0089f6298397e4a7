"""The Personalizer-compatible rank routes against our own rank route, in one run.

    python bench/personalizer.py [--duration 3] [--rounds 3]

One router process (uvicorn, one worker, VW policy, decision logging on) serves a
rank-only experiment. wrk drives, interleaved per round:
- own:       POST /v1/experiments/{e}/rank, 10 actions with features, a context list;
- compat:    POST /loops/{e}/personalizer/v1.0/rank, the same request in Personalizer's shape;
- multislot: POST /loops/{e}/personalizer/v1.1-preview.3/multislot/rank, 3 slots x 20 actions;
- floor:     GET /health/live, the cost of an HTTP round trip to this server.
Reported: req/s at 8 connections, p50/p99 at 1 connection, the compat/own ratios (median
over rounds) and the multislot p50 added over the floor.

`--inprocess` instead calls the router app's handler directly (no sockets, no wrk), the
three routes interleaved in rounds of 2,000 requests: the CPU each route's handler costs,
which is what the compatible route adds, without the HTTP server's share and its noise.
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

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from banditgate.redis import EmbeddedRedis, connect  # noqa: E402
from banditgate.spec import parse_spec  # noqa: E402
from banditgate.store import ExperimentStore  # noqa: E402
from bench.router import free_port, parse_wrk, wait_port  # noqa: E402

EXPERIMENT = "bench-personalizer"
TOPICS = ["news", "sports", "music", "film", "games", "food", "travel", "tech", "art", "cars"]


def actions(n: int) -> list[dict[str, object]]:
    return [
        {"id": f"item-{i}", "features": [{"topic": TOPICS[i % 10]}, {"length": i % 5}]}
        for i in range(n)
    ]


def contexts() -> list[list[dict[str, object]]]:
    return [
        [{"user": {"tier": tier, "device": device}}, {"time": time}]
        for tier in ("gold", "free")
        for device in ("mobile", "desktop")
        for time in ("morning", "evening")
    ]


def bodies(target: str) -> list[bytes]:
    out = []
    for context in contexts():
        if target == "own":
            out.append(orjson.dumps({"context": context, "actions": actions(10)}))
        elif target == "compat":
            out.append(orjson.dumps({"contextFeatures": context, "actions": actions(10)}))
        else:
            slots = [
                {"id": slot, "baseAction": f"item-{i}", "features": [{"size": slot}]}
                for i, slot in enumerate(("main", "side", "footer"))
            ]
            out.append(
                orjson.dumps({"contextFeatures": context, "actions": actions(20), "slots": slots})
            )
    return out


def script(path: Path, method: str, url_path: str, payloads: list[bytes]) -> None:
    items = ",\n".join("[==[" + p.decode() + "]==]" for p in payloads) or "[==[]==]"
    path.write_text(
        f"""
local bodies = {{
{items}
}}
local i = 0
request = function()
  i = i + 1
  return wrk.format("{method}", "{url_path}", {{["Content-Type"] = "application/json"}}, bodies[(i % #bodies) + 1])
end
"""
    )


def wrk(port: int, path: Path, connections: int, duration: float) -> dict[str, float]:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "-s", str(path)]
    command += ["--latency", f"http://127.0.0.1:{port}"]
    return parse_wrk(subprocess.run(command, capture_output=True, text=True, check=True).stdout)


async def prepare(url: str) -> None:
    redis = connect(url)
    spec = parse_spec(
        {
            "name": EXPERIMENT,
            "arms": [{"name": f"item-{i}"} for i in range(20)],
            "policy": {"exploration": {"type": "epsilon", "epsilon": 0.2}, "min_arm_share": 0.0},
        }
    )
    await ExperimentStore(redis).put(spec)
    await redis.aclose()


async def in_process(url: str, rounds: int, n: int = 2000) -> None:
    from router.app import create_app
    from router.settings import RouterSettings

    app = create_app(RouterSettings(redis_url=url, experiments=[EXPERIMENT]))
    await app.startup()
    paths = {
        "own": f"/v1/experiments/{EXPERIMENT}/rank",
        "compat": f"/loops/{EXPERIMENT}/personalizer/v1.0/rank",
        "multislot": f"/loops/{EXPERIMENT}/personalizer/v1.1-preview.3/multislot/rank",
    }
    payloads = {target: bodies(target) for target in paths}

    async def once(target: str, body: bytes) -> None:
        sent: list[dict[str, object]] = []
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, object]:
            return messages.pop()

        async def send(message: dict[str, object]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "POST",
            "path": paths[target],
            "headers": [(b"content-length", str(len(body)).encode())],
            "query_string": b"",
        }
        await app.handle(scope, receive, send)  # type: ignore[arg-type]
        if sent[0]["status"] not in (200, 201):
            sys.exit(f"{target}: {sent}")

    timings: dict[str, list[float]] = {target: [] for target in paths}
    try:
        for target in paths:  # warm-up
            for i in range(200):
                await once(target, payloads[target][i % len(payloads[target])])
        for round_ in range(rounds):
            order = list(paths) if round_ % 2 == 0 else list(reversed(paths))
            for target in order:  # alternated, so no route always follows the same one
                start = time.perf_counter()
                for i in range(n):
                    await once(target, payloads[target][i % len(payloads[target])])
                timings[target].append((time.perf_counter() - start) / n * 1e6)
    finally:
        await app.shutdown()
    for target, values in timings.items():
        print(f"{target:<10} {statistics.median(values):8.1f} us per request (median of rounds)")
    ratio = statistics.median(c / o for c, o in zip(timings["compat"], timings["own"], strict=True))
    print(f"compat / own: {ratio:.2f}x the handler's CPU per request")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--inprocess", action="store_true")
    args = parser.parse_args()
    embedded = None
    url = os.environ.get("BANDITGATE_REDIS_URL")
    if not url:
        embedded = EmbeddedRedis(Path(tempfile.mkdtemp()) / "redis")
        url = embedded.url
    asyncio.run(prepare(url))
    if args.inprocess:
        asyncio.run(in_process(url, args.rounds))
        if embedded is not None:
            embedded.close()
        return
    port = free_port()
    env = {
        **os.environ,
        "BANDITGATE_REDIS_URL": url,
        "BANDITGATE_EXPERIMENTS": EXPERIMENT,
        "BANDITGATE_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
    }
    server = subprocess.Popen(
        [
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
            "--factory",
            "router.app:create_app",
        ],
        env=env,
        cwd=ROOT,
    )
    workdir = Path(tempfile.mkdtemp())
    targets = {
        "own": ("POST", f"/v1/experiments/{EXPERIMENT}/rank"),
        "compat": ("POST", f"/loops/{EXPERIMENT}/personalizer/v1.0/rank"),
        "multislot": ("POST", f"/loops/{EXPERIMENT}/personalizer/v1.1-preview.3/multislot/rank"),
        "floor": ("GET", "/health/live"),
    }
    scripts = {}
    for target, (method, path) in targets.items():
        scripts[target] = workdir / f"{target}.lua"
        script(scripts[target], method, path, bodies(target) if method == "POST" else [])
    results: dict[str, list[dict[str, float]]] = {t: [] for t in targets}
    try:
        wait_port(port)
        for target in targets:  # warm-up: policy loaded, caches filled
            wrk(port, scripts[target], 1, 1)
        for _ in range(args.rounds):
            for target in targets:
                loaded = wrk(port, scripts[target], 8, args.duration)
                single = wrk(port, scripts[target], 1, args.duration)
                if loaded["non2xx"] or single["non2xx"]:
                    sys.exit(f"{target}: non-2xx answers")
                results[target].append(
                    {"rps": loaded["rps"], "p50": single["p50"], "p99": single["p99"]}
                )
    finally:
        server.terminate()
        server.wait(10)
        if embedded is not None:
            embedded.close()
    print(f"{'target':<10} {'req/s @8':>10} {'p50 ms @1':>10} {'p99 ms @1':>10}")
    for target, rounds in results.items():
        rps = statistics.median(r["rps"] for r in rounds)
        p50 = statistics.median(r["p50"] for r in rounds)
        p99 = statistics.median(r["p99"] for r in rounds)
        print(f"{target:<10} {rps:>10.0f} {p50:>10.3f} {p99:>10.3f}")
    cost = statistics.median(
        o["rps"] / c["rps"] for o, c in zip(results["own"], results["compat"], strict=True)
    )
    latency = statistics.median(
        c["p50"] / o["p50"] for o, c in zip(results["own"], results["compat"], strict=True)
    )
    added = statistics.median(
        m["p50"] - f["p50"] for m, f in zip(results["multislot"], results["floor"], strict=True)
    )
    print(f"compat / own: {cost:.2f}x the CPU per request (req/s ratio), {latency:.2f}x the p50")
    print(f"multislot 3 slots x 20 actions: p50 added over the floor {added:.3f} ms")


if __name__ == "__main__":
    main()
