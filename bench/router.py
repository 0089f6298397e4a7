"""Router throughput and added latency against a bare pass-through proxy, in one run.

    python bench/router.py [--duration 8] [--rounds 3] [--exploration cover] [--baseline DIR]

Starts a near-free backend, a bare proxy (raw ASGI + aiohttp: no decision, no
logging), the same bare proxy on the router's own HTTP client (bare-lean) and the router (bandit mode, VW policy, decision logging on), and drives
each with wrk: req/s at 32 connections and p50/p99 at 1 connection. Request
bodies cycle through 1,000 distinct synthetic reviews. Rounds interleave the
targets; the ratio is taken per round and the median reported, because absolute
numbers on a shared 2-core machine move between runs.

`--baseline DIR` adds a fifth target, `router-before`: the router of another checkout
(say `git archive main | tar -x -C DIR`), run in the same rounds, so a change to the hot
path is measured before and after in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from banditgate import keys  # noqa: E402
from banditgate.events import decode_decision_batch  # noqa: E402
from banditgate.redis import EmbeddedRedis, connect  # noqa: E402
from banditgate.spec import parse_spec  # noqa: E402
from banditgate.store import ExperimentStore  # noqa: E402
from banditgate_app.demo.reviews import review_pool  # noqa: E402

EXPERIMENT = "bench-router"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def wrk_script(path: Path, url_path: str) -> None:
    bodies = [orjson.dumps({"features": [r.text]}).decode() for r in review_pool(1000, seed=7)]
    lua_bodies = ",\n".join("[==[" + body + "]==]" for body in bodies)
    path.write_text(
        f"""
local bodies = {{
{lua_bodies}
}}
local i = 0
request = function()
  i = i + 1
  return wrk.format("POST", "{url_path}", {{["Content-Type"] = "application/json"}}, bodies[(i % #bodies) + 1])
end
"""
    )


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def parse_wrk(output: str) -> dict[str, float]:
    result: dict[str, float] = {}
    match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if match:
        result["rps"] = float(match.group(1))
    for pct in ("50", "99"):
        match = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        if match:
            result[f"p{pct}"] = float(match.group(1)) * _UNITS[match.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    result["non2xx"] = float(errors.group(1)) if errors else 0.0
    return result


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(
    port: int, script: Path, connections: int, duration: float, latency: bool
) -> dict[str, float]:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "-s", str(script)]
    if latency:
        command.append("--latency")
    command.append(f"http://127.0.0.1:{port}")
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return parse_wrk(output)


def spec_document(backend_url: str, exploration: str, context: bool = True) -> dict[str, object]:
    return {
        "name": EXPERIMENT,
        "mode": "bandit",
        "arms": [
            {
                "name": "bert-1",
                "url": backend_url,
                "protocol": "sagemaker",
                "features": {"size": "base"},
            },
            {
                "name": "bert-2",
                "url": backend_url,
                "protocol": "sagemaker",
                "features": {"size": "large"},
            },
        ],
        "context": {"text": "features[0]", "headers": ["x-segment"]} if context else {},
        "policy": {"learner": "vw", "exploration": {"type": exploration}},
    }


async def prepare(url: str, backend_url: str, exploration: str, context: bool = True) -> None:
    redis = connect(url)
    try:
        await redis.delete(keys.decisions(EXPERIMENT))
        await ExperimentStore(redis).put(
            parse_spec(spec_document(backend_url, exploration, context))
        )
    finally:
        await redis.aclose()


async def count_decisions(url: str) -> int:
    redis = connect(url)
    try:
        total = 0
        for _, fields in await redis.xrange(keys.decisions(EXPERIMENT)):
            total += len(decode_decision_batch(fields))
        return total
    finally:
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--exploration", default="cover")
    parser.add_argument(
        "--baseline", type=Path, help="another checkout whose router runs as router-before"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/router.py needs wrk (Debian package 'wrk')")

    embedded = None
    url = os.environ.get("BANDITGATE_REDIS_URL")
    if not url:
        embedded = EmbeddedRedis(Path(tempfile.mkdtemp()) / "redis")
        url = embedded.url
    ports = {
        "backend": free_port(),
        "bare": free_port(),
        "bare-lean": free_port(),
        "router": free_port(),
    }
    if args.baseline is not None:
        ports["router-before"] = free_port()
    backend_url = f"http://127.0.0.1:{ports['backend']}"
    env = {
        **os.environ,
        "BANDITGATE_REDIS_URL": url,
        "BANDITGATE_EXPERIMENTS": EXPERIMENT,
        "BARE_UPSTREAM": backend_url,
        "PYTHONPATH": str(ROOT),
        "BANDITGATE_LOG_LEVEL": "WARNING",
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
    ]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        asyncio.run(prepare(url, backend_url, args.exploration))
        processes.append(
            subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "fast_backend.py"), str(ports["backend"])],
                env=env,
            )
        )
        processes.append(
            subprocess.Popen(
                [*uvicorn, "--port", str(ports["bare"]), "bench.bare_proxy:app"], env=env, cwd=ROOT
            )
        )
        processes.append(
            subprocess.Popen(
                [*uvicorn, "--port", str(ports["bare-lean"]), "bench.bare_proxy:lean_app"],
                env=env,
                cwd=ROOT,
            )
        )
        processes.append(
            subprocess.Popen(
                [*uvicorn, "--port", str(ports["router"]), "--factory", "router.app:create_app"],
                env=env,
                cwd=ROOT,
            )
        )
        if args.baseline is not None:
            baseline = args.baseline.resolve()
            processes.append(
                subprocess.Popen(
                    [
                        *uvicorn,
                        "--port",
                        str(ports["router-before"]),
                        "--factory",
                        "router.app:create_app",
                    ],
                    env={**env, "PYTHONPATH": str(baseline)},
                    cwd=baseline,
                )
            )
        for port in ports.values():
            wait_port(port)
        pids = {target: process.pid for target, process in zip(ports, processes, strict=True)}
        workdir = Path(tempfile.mkdtemp())
        scripts = {}
        for target in ports:
            path = "/invocations" if target in ("backend", "bare", "bare-lean") else None
            scripts[target] = workdir / f"{target}.lua"
            wrk_script(scripts[target], path or f"/endpoints/{EXPERIMENT}/invocations")
        for target in ports:  # warm up connections, caches and the JIT-less interpreter
            wrk(ports[target], scripts[target], 32, 2, latency=False)

        rounds: list[dict[str, dict[str, float]]] = []
        requests_to_router = 0
        for number in range(args.rounds):
            results: dict[str, dict[str, float]] = {}
            for target in ports:
                before = cpu_seconds(pids[target])
                load = wrk(ports[target], scripts[target], 32, args.duration, latency=False)
                used = cpu_seconds(pids[target]) - before
                single = wrk(ports[target], scripts[target], 1, args.duration, latency=True)
                results[target] = {
                    "rps": load["rps"],
                    "p50": single["p50"],
                    "p99": single["p99"],
                    "non2xx": load["non2xx"] + single["non2xx"],
                    "cpu_us": used / max(load["rps"] * round(args.duration), 1) * 1e6,
                }
                if target.startswith("router"):
                    requests_to_router += int(
                        load["rps"] * args.duration + single.get("rps", 0) * args.duration
                    )
            rounds.append(results)
            ratio = results["router"]["rps"] / results["bare"]["rps"]
            before_note = ""
            if "router-before" in results:
                before_ratio = results["router-before"]["rps"] / results["bare"]["rps"]
                before_note = (
                    f", router-before {results['router-before']['rps']:.0f} "
                    f"(router-before/bare {before_ratio:.2f})"
                )
            print(
                f"round {number + 1}: backend {results['backend']['rps']:.0f} req/s, "
                f"bare {results['bare']['rps']:.0f}, router {results['router']['rps']:.0f} "
                f"(router/bare {ratio:.2f}){before_note}; CPU per request: "
                f"bare {results['bare']['cpu_us']:.0f} us, "
                f"router {results['router']['cpu_us']:.0f} us",
                flush=True,
            )
        time.sleep(1.0)
        logged = asyncio.run(count_decisions(url))
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=20)
        if embedded is not None:
            embedded.close()

    def median(target: str, key: str) -> float:
        return statistics.median(r[target][key] for r in rounds)

    ratios = [r["router"]["rps"] / r["bare"]["rps"] for r in rounds]
    lean_ratios = [r["router"]["rps"] / r["bare-lean"]["rps"] for r in rounds]
    print()
    print(
        f"exploration={args.exploration} duration={args.duration}s rounds={args.rounds} "
        f"(medians over rounds; added latency = proxy minus backend direct, 1 connection)"
    )
    print()
    print(
        "| target | req/s at 32 conns | CPU per request | p50 at 1 conn | p99 at 1 conn | added p50 | added p99 |"
    )
    print("|---|---|---|---|---|---|---|")
    for target in ports:
        added50 = median(target, "p50") - median("backend", "p50")
        added99 = median(target, "p99") - median("backend", "p99")
        print(
            f"| {target} | {median(target, 'rps'):,.0f} | {median(target, 'cpu_us'):.0f} us | "
            f"{median(target, 'p50'):.3f} ms | {median(target, 'p99'):.3f} ms | "
            f"{added50:.3f} ms | {added99:.3f} ms |"
        )
    print()
    print(
        f"router/bare throughput ratio: {statistics.median(ratios):.3f} "
        f"(per round: {', '.join(f'{r:.3f}' for r in ratios)})"
    )
    print(
        f"router/bare-lean throughput ratio: {statistics.median(lean_ratios):.3f} "
        f"(per round: {', '.join(f'{r:.3f}' for r in lean_ratios)}) - the cost of deciding and logging"
    )
    cpu_ratios = [r["bare"]["cpu_us"] / r["router"]["cpu_us"] for r in rounds]
    print(
        f"bare/router CPU-per-request ratio: {statistics.median(cpu_ratios):.3f} "
        f"(per round: {', '.join(f'{r:.3f}' for r in cpu_ratios)}) - the throughput ratio "
        "a CPU-bound proxy would reach, less sensitive to other load on the machine"
    )
    print(
        f"router added p99 minus bare added p99: {median('router', 'p99') - median('bare', 'p99'):.3f} ms"
    )
    if "router-before" in ports:
        before = [r["router-before"]["rps"] / r["bare"]["rps"] for r in rounds]
        after_before = [r["router"]["rps"] / r["router-before"]["rps"] for r in rounds]
        cpu_before = [r["router-before"]["cpu_us"] / r["router"]["cpu_us"] for r in rounds]
        print(
            f"router-before/bare throughput ratio: {statistics.median(before):.3f} "
            f"(per round: {', '.join(f'{r:.3f}' for r in before)})"
        )
        print(
            f"router/router-before throughput: {statistics.median(after_before):.3f} "
            f"(per round: {', '.join(f'{r:.3f}' for r in after_before)}); "
            f"CPU per request before/after: {statistics.median(cpu_before):.3f}"
        )
    non2xx = sum(r[t]["non2xx"] for r in rounds for t in r)
    print(f"non-2xx responses: {non2xx:.0f}; decisions logged by the router: {logged:,}")


if __name__ == "__main__":
    main()
