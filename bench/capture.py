"""What data capture costs the router: capture off, at 10% and at 100%, in one run.

    python bench/capture.py [--duration 6] [--rounds 3]

Three router processes, one experiment each (the same bandit spec as bench/router.py,
with `capture: {sample_percent: 0 | 10 | 100}`), behind the same near-free backend,
driven in turn by wrk at 32 connections. Rounds interleave the targets; per round
the throughput and the CPU per request are taken relative to capture off, and the
medians reported (absolute numbers move with the machine's other load; CPU per
request moves least).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from banditgate.redis import EmbeddedRedis, connect  # noqa: E402
from banditgate.spec import parse_spec  # noqa: E402
from banditgate.store import ExperimentStore  # noqa: E402
from bench.router import cpu_seconds, free_port, spec_document, wait_port, wrk, wrk_script  # noqa: E402

TARGETS = {"off": None, "10%": 10.0, "100%": 100.0}


def experiment(target: str) -> str:
    return "bench-capture-" + {"off": "off", "10%": "ten", "100%": "all"}[target]


async def prepare(url: str, backend_url: str) -> None:
    redis = connect(url)
    try:
        store = ExperimentStore(redis)
        for target, percent in TARGETS.items():
            doc = spec_document(backend_url, "cover")
            doc["name"] = experiment(target)
            if percent is not None:
                doc["capture"] = {"sample_percent": percent}
            await store.put(parse_spec(doc))
    finally:
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/capture.py needs wrk (Debian package 'wrk')")
    embedded = None
    url = os.environ.get("BANDITGATE_REDIS_URL")
    if not url:
        embedded = EmbeddedRedis(Path(tempfile.mkdtemp()) / "redis")
        url = embedded.url
    data_dir = Path(tempfile.mkdtemp())
    backend_port = free_port()
    backend_url = f"http://127.0.0.1:{backend_port}"
    ports = {target: free_port() for target in TARGETS}
    env = {
        **os.environ,
        "BANDITGATE_REDIS_URL": url,
        "PYTHONPATH": str(ROOT),
        "BANDITGATE_LOG_LEVEL": "WARNING",
        "BANDITGATE_DATA_DIR": str(data_dir),
    }
    uvicorn = [
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
        "--host",
        "127.0.0.1",
        "--factory",
        "router.app:create_app",
    ]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        asyncio.run(prepare(url, backend_url))
        processes.append(
            subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "fast_backend.py"), str(backend_port)],
                env=env,
            )
        )
        pids = {}
        for target, port in ports.items():
            process = subprocess.Popen(
                [*uvicorn, "--port", str(port)],
                env={**env, "BANDITGATE_EXPERIMENTS": experiment(target)},
                cwd=ROOT,
            )
            processes.append(process)
            pids[target] = process.pid
        wait_port(backend_port)
        for port in ports.values():
            wait_port(port)
        workdir = Path(tempfile.mkdtemp())
        scripts = {}
        for target in TARGETS:
            scripts[target] = workdir / f"{target}.lua"
            wrk_script(scripts[target], f"/endpoints/{experiment(target)}/invocations")
            wrk(ports[target], scripts[target], 32, 2, latency=False)  # warm up
        rounds = []
        for number in range(args.rounds):
            results = {}
            for target in TARGETS:
                before = cpu_seconds(pids[target])
                load = wrk(ports[target], scripts[target], 32, args.duration, latency=False)
                used = cpu_seconds(pids[target]) - before
                results[target] = {
                    "rps": load["rps"],
                    "cpu_us": used / max(load["rps"] * round(args.duration), 1) * 1e6,
                    "non2xx": load["non2xx"],
                }
            rounds.append(results)
            print(
                f"round {number + 1}: "
                + ", ".join(
                    f"{t} {r['rps']:.0f} req/s {r['cpu_us']:.0f} us/req" for t, r in results.items()
                ),
                flush=True,
            )
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=20)
        if embedded is not None:
            embedded.close()
    files = list((data_dir / "capture").rglob("*.jsonl"))
    lines = sum(len(f.read_bytes().splitlines()) for f in files)
    print()
    print(f"duration={args.duration}s rounds={args.rounds}; medians over rounds, relative to off")
    print()
    print("| capture | req/s at 32 conns | throughput vs off | CPU per request | CPU vs off |")
    print("|---|---|---|---|---|")
    for target in TARGETS:
        rps = statistics.median(r[target]["rps"] for r in rounds)
        cpu = statistics.median(r[target]["cpu_us"] for r in rounds)
        vs = statistics.median(r[target]["rps"] / r["off"]["rps"] for r in rounds)
        cpu_vs = statistics.median(r[target]["cpu_us"] / r["off"]["cpu_us"] for r in rounds)
        print(f"| {target} | {rps:,.0f} | {vs:.3f} | {cpu:.0f} us | {cpu_vs:.3f} |")
    non2xx = sum(r[t]["non2xx"] for r in rounds for t in r)
    print()
    print(
        f"non-2xx responses: {non2xx:.0f}; captured records on disk: {lines:,} in {len(files)} files"
    )


if __name__ == "__main__":
    main()
