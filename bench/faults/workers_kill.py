"""Fault: `serve`'s background workers child SIGKILLed while rewards flow; then `export flush`.

    .venv/bin/python bench/faults/workers_kill.py [--decisions 2000] [--kills 2]

Starts a private redis-server and `banditgate serve` (loopback, one HTTP worker), makes
decisions through the rank route, and posts one reward per decision (half of them before
the router has flushed the decision, so they go through the unrouted stream) while the
workers child is SIGKILLed `--kills` times. Then waits for every window to close, asks
`POST /v1/export/flush`, and counts: rewards accepted (202), joined with their value,
counted late, rows in closed Parquet files.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson
import pyarrow.parquet as pq
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from banditgate import keys  # noqa: E402
from banditgate.redis import connect  # noqa: E402
from tests.faults import RedisServer  # noqa: E402
from tests.support import free_socket  # noqa: E402

WINDOW_S = 8.0


def spec(name: str) -> dict[str, object]:
    return {
        "name": name,
        "mode": "bandit",
        "arms": [
            {"name": "a", "url": "http://127.0.0.1:9"},
            {"name": "b", "url": "http://127.0.0.1:9"},
        ],
        "context": {"body": ["user.tier"]},
        "policy": {"learner": "vw", "exploration": {"type": "epsilon", "epsilon": 0.1}},
        "reward": {"window_s": WINDOW_S, "aggregation": "sum", "min": 0, "max": 1},
    }


def workers_pid(base: str) -> int:
    import urllib.request

    with urllib.request.urlopen(f"{base}/health/ready", timeout=5) as response:
        return int(orjson.loads(response.read())["workers"]["pid"])


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bg-fault-"))
    redis_server = RedisServer(work / "redis")
    redis_server.start()
    name = "faults"
    spec_file = work / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec(name)))
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {
        **os.environ,
        "BANDITGATE_REDIS_URL": redis_server.url,
        "BANDITGATE_DATA_DIR": str(work / "data"),
        "BANDITGATE_EXPORT_MAX_AGE_S": "3600",
        "BANDITGATE_EXPORT_TAKEOVER_IDLE_MS": "2000",
    }
    serve = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "banditgate_app.cli",
            "serve",
            "-f",
            str(spec_file),
            "--port",
            str(port),
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    redis = connect(redis_server.url)
    accepted = refused = 0
    kills: list[int] = []
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                try:
                    async with http.get(f"{base}/health/ready") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            kill_at = {int(args.decisions * (k + 1) / (args.kills + 1)) for k in range(args.kills)}
            rng = random.Random(7)
            for i in range(args.decisions):
                body = {"context": {"user": {"tier": rng.choice(["gold", "free"])}}}
                async with http.post(f"{base}/v1/experiments/{name}/rank", json=body) as r:
                    event_id = (await r.json())["event_id"]
                reward = {"event_id": event_id, "value": 1.0, "idempotency_key": "r1"}
                if i % 2 == 0:
                    reward["experiment"] = name  # routed at once; the others may go unrouted
                async with http.post(f"{base}/v1/rewards", json=reward) as r:
                    if r.status == 202:
                        accepted += 1
                    else:
                        refused += 1
                if i in kill_at:
                    pid = workers_pid(base)
                    os.kill(pid, signal.SIGKILL)
                    kills.append(pid)
            started = time.monotonic()
            # Every window closes; the joiner of the restarted child joins what is left.
            while True:
                counters = await redis.hgetall(keys.join_counters(name))
                joined = int(counters.get(b"joined", 0))
                if joined >= args.decisions or time.monotonic() - started > 120:
                    break
                await asyncio.sleep(0.5)
            headers = {"content-type": "application/json"}
            flush_body = orjson.dumps({"experiment": name, "timeout_s": 60})
            async with http.post(f"{base}/v1/export/flush", data=flush_body, headers=headers) as r:
                flush = await r.json()
        counters = {
            k.decode(): int(v) for k, v in (await redis.hgetall(keys.join_counters(name))).items()
        }
        files = list((work / "data" / "export" / name).rglob("*.parquet"))
        rows = sum(len(pq.read_table(path)) for path in files)
        restarts = orjson.loads(
            subprocess.run(
                ["curl", "-s", f"{base}/health/ready"], capture_output=True, text=True, check=False
            ).stdout
            or "{}"
        ).get("workers", {})
        print(f"decisions {args.decisions}, rewards accepted {accepted}, refused {refused}")
        print(f"workers child SIGKILLed {len(kills)} times; readiness says {restarts}")
        print(
            "joined {joined}, with a reward {joined_rewarded}, default {joined_default}; "
            "rewards joined {rewards_joined}, late {late}, duplicate {dup}".format(
                joined=counters.get("joined", 0),
                joined_rewarded=counters.get("joined_rewarded", 0),
                joined_default=counters.get("joined_default", 0),
                rewards_joined=counters.get("rewards_joined", 0),
                late=counters.get("rewards_late", 0),
                dup=counters.get("rewards_duplicate", 0),
            )
        )
        print(
            f"export flush: complete {flush.get('complete')}, unexported {flush.get('unexported')}; "
            f"rows in closed files {rows}"
        )
    finally:
        await redis.aclose()
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            serve.kill()
        redis_server.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--decisions", type=int, default=2000)
    parser.add_argument("--kills", type=int, default=2)
    asyncio.run(main(parser.parse_args()))
