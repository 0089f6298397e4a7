"""Publish-to-serving latency: how long after a publish a router serves the new policy.

    python bench/swap.py [--publishes 30]

A router runs in its own process (uvicorn, as in production). The bench
publishes VW models one after another through the registry and polls the
router's /health/ready (which reports each experiment's loaded policy version)
every 2 ms, timing from the publish call's return to the first answer with the
new version. The model is a trained 2-arm policy (about 7 KB).
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

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from banditgate.featurize import arm_action_lines, example_lines  # noqa: E402
from banditgate.policy import new_workspace, workspace_to_bytes  # noqa: E402
from banditgate.redis import EmbeddedRedis, connect  # noqa: E402
from banditgate.registry import PolicyRegistry  # noqa: E402
from banditgate.spec import parse_spec  # noqa: E402
from banditgate.store import ExperimentStore  # noqa: E402

EXPERIMENT = "bench-swap"


async def main(publishes: int) -> None:
    embedded = None
    url = os.environ.get("BANDITGATE_REDIS_URL")
    if not url:
        embedded = EmbeddedRedis(Path(tempfile.mkdtemp()) / "redis")
        url = embedded.url
    spec = parse_spec(
        {
            "name": EXPERIMENT,
            "arms": [
                {"name": "a", "url": "http://127.0.0.1:9"},
                {"name": "b", "url": "http://127.0.0.1:9"},
            ],
            "context": {"text": "features[0]"},
        }
    )
    workspace = new_workspace(spec.policy, save_resume=True)
    lines = arm_action_lines(spec.arms)
    for i in range(2000):
        workspace.learn(example_lines({"t.len": "15"}, lines, (i % 2, -float(i % 2), 0.5)))
    model = workspace_to_bytes(workspace)
    redis = connect(url)
    await redis.delete(*[k async for k in redis.scan_iter(match=f"bg:{{{EXPERIMENT}}}:*")] or ["-"])
    await ExperimentStore(redis).put(spec)
    registry = PolicyRegistry(redis)
    port = 18000 + os.getpid() % 1000
    env = {
        **os.environ,
        "BANDITGATE_REDIS_URL": url,
        "BANDITGATE_EXPERIMENTS": EXPERIMENT,
        "PYTHONPATH": str(ROOT),
    }
    router = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "router.app:create_app",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--log-level",
            "warning",
        ],
        env=env,
        cwd=ROOT,
    )
    latencies: list[float] = []
    try:
        async with aiohttp.ClientSession() as http:

            async def version() -> int | None:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/health/ready") as response:
                        if response.status != 200:
                            return None
                        return int(
                            (await response.json())["experiments"][EXPERIMENT]["policy_version"]
                        )
                except aiohttp.ClientError:
                    return None

            while await version() is None:
                await asyncio.sleep(0.1)
            for _ in range(publishes):
                record = await registry.publish(EXPERIMENT, model, learner="vw", source="bench")
                published = time.perf_counter()
                while await version() != record.version:
                    await asyncio.sleep(0.002)
                latencies.append((time.perf_counter() - published) * 1000)
                await asyncio.sleep(0.1)
    finally:
        router.terminate()
        router.wait()
        await redis.aclose()
        if embedded is not None:
            embedded.close()
    latencies.sort()
    print(f"{publishes} publishes: publish -> router serving the new version")
    print(
        f"p50 {statistics.median(latencies):.1f} ms, p90 {latencies[int(0.9 * (len(latencies) - 1))]:.1f} ms, "
        f"max {latencies[-1]:.1f} ms (polling every 2 ms)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--publishes", type=int, default=30)
    asyncio.run(main(parser.parse_args().publishes))
