"""Added latency of the SageMaker and Open Inference Protocol (JSON) routes at one connection.

    python bench/protocols.py [--duration 5] [--rounds 2]

Starts the near-free backend and the router (bandit mode, VW policy, decision logging
on) with two experiments: `bench-sm` (sagemaker arms, text context, as bench/router.py)
and `bench-oip` (v2 arms, a context read from the JSON body). wrk drives each route at
one connection, and the backend directly with the same bodies; the added p50/p99 is
route minus backend, per round, and the median over rounds is reported. SageMaker
requests carry a fresh `amz-sdk-invocation-id` each, as boto3 sends, so the
once-per-client-request bookkeeping is on the measured path.
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

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from banditgate.redis import EmbeddedRedis, connect  # noqa: E402
from banditgate.spec import parse_spec  # noqa: E402
from banditgate.store import ExperimentStore  # noqa: E402
from banditgate_app.demo.reviews import review_pool  # noqa: E402
from bench.router import free_port, wait_port, wrk  # noqa: E402

SAGEMAKER = "bench-sm"
OIP = "bench-oip"


def bodies(kind: str) -> list[str]:
    reviews = review_pool(1000, seed=7)
    if kind == "sagemaker":
        return [orjson.dumps({"features": [r.text]}).decode() for r in reviews]
    return [
        orjson.dumps(
            {
                "parameters": {"segment": "gold" if i % 2 else "free"},
                "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [r.text]}],
            }
        ).decode()
        for i, r in enumerate(reviews)
    ]


def script(path: Path, url_path: str, kind: str) -> None:
    lua_bodies = ",\n".join("[==[" + body + "]==]" for body in bodies(kind))
    sdk = '["amz-sdk-invocation-id"] = "bench-" .. i,' if kind == "sagemaker" else ""
    path.write_text(
        f"""
local bodies = {{
{lua_bodies}
}}
local i = 0
request = function()
  i = i + 1
  return wrk.format("POST", "{url_path}", {{["Content-Type"] = "application/json", {sdk}}}, bodies[(i % #bodies) + 1])
end
"""
    )


def specs(backend_url: str) -> list[dict[str, object]]:
    sagemaker = {
        "name": SAGEMAKER,
        "mode": "bandit",
        "arms": [
            {"name": "bert-1", "url": backend_url, "protocol": "sagemaker"},
            {"name": "bert-2", "url": backend_url, "protocol": "sagemaker"},
        ],
        "context": {"text": "features[0]", "headers": ["x-segment"]},
        "policy": {"learner": "vw", "exploration": {"type": "cover"}},
    }
    oip = {
        "name": OIP,
        "mode": "bandit",
        "arms": [
            {"name": "m-1", "url": backend_url, "protocol": "v2", "model": "m"},
            {"name": "m-2", "url": backend_url, "protocol": "v2", "model": "m"},
        ],
        "context": {"body": ["parameters.segment"]},
        "policy": {"learner": "vw", "exploration": {"type": "cover"}},
    }
    return [sagemaker, oip]


async def prepare(url: str, backend_url: str) -> None:
    redis = connect(url)
    try:
        for document in specs(backend_url):
            await ExperimentStore(redis).put(parse_spec(document))
    finally:
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/protocols.py needs wrk (Debian package 'wrk')")
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
        "BANDITGATE_EXPERIMENTS": f"{SAGEMAKER},{OIP}",
        "PYTHONPATH": str(ROOT),
        "BANDITGATE_LOG_LEVEL": "WARNING",
    }
    workdir = Path(tempfile.mkdtemp())
    # target -> (port, path, body kind)
    targets = {
        "backend (sagemaker body)": (backend_port, "/invocations", "sagemaker"),
        "router SageMaker": (router_port, f"/endpoints/{SAGEMAKER}/invocations", "sagemaker"),
        "backend (OIP body)": (backend_port, "/v2/models/m/infer", "oip"),
        "router OIP JSON": (router_port, f"/v2/models/{OIP}/infer", "oip"),
    }
    scripts = {}
    for target, (_, path, kind) in targets.items():
        scripts[target] = workdir / f"{len(scripts)}.lua"
        script(scripts[target], path, kind)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        asyncio.run(prepare(url, backend_url))
        processes.append(
            subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "fast_backend.py"), str(backend_port)],
                env=env,
            )
        )
        processes.append(
            subprocess.Popen(
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
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(router_port),
                    "--factory",
                    "router.app:create_app",
                ],
                env=env,
                cwd=ROOT,
            )
        )
        wait_port(backend_port)
        wait_port(router_port)
        for target, (port, _, _) in targets.items():
            wrk(port, scripts[target], 1, 2, latency=True)  # warm up
        rounds: list[dict[str, dict[str, float]]] = []
        for number in range(args.rounds):
            results = {
                target: wrk(port, scripts[target], 1, args.duration, latency=True)
                for target, (port, _, _) in targets.items()
            }
            for target, result in results.items():
                if result["non2xx"]:
                    sys.exit(f"{target}: {result['non2xx']:.0f} non-2xx answers")
            rounds.append(results)
            print(
                f"round {number + 1}: "
                + ", ".join(f"{t} p99 {r['p99']:.3f} ms" for t, r in results.items()),
                flush=True,
            )
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=20)
        if embedded is not None:
            embedded.close()

    def added(route: str, backend: str, key: str) -> float:
        return statistics.median(r[route][key] - r[backend][key] for r in rounds)

    print()
    print(f"duration={args.duration}s rounds={args.rounds}, 1 connection, medians over rounds")
    print()
    print("| route | p50 | p99 | added p50 | added p99 |")
    print("|---|---|---|---|---|")
    for route, backend in (
        ("router SageMaker", "backend (sagemaker body)"),
        ("router OIP JSON", "backend (OIP body)"),
    ):
        p50 = statistics.median(r[route]["p50"] for r in rounds)
        p99 = statistics.median(r[route]["p99"] for r in rounds)
        print(
            f"| {route} | {p50:.3f} ms | {p99:.3f} ms | {added(route, backend, 'p50'):.3f} ms "
            f"| {added(route, backend, 'p99'):.3f} ms |"
        )


if __name__ == "__main__":
    main()
