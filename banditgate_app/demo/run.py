"""`banditgate demo`: the seed scenario on the real system, end to end.

Two review-classifier backends, `banditgate serve` (router, reward webhook,
joiner, trainer, control plane) in its own process on an embedded Redis, and a
traffic generator that sends reviews with known ratings and posts each reward
(1 if the predicted rating is right) after a random delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

from banditgate import keys
from banditgate.contracts import JoinedField
from banditgate.events import decode_decision_batch
from banditgate.redis import EmbeddedRedis, Redis, connect, xrange_entries
from banditgate.registry import PolicyRegistry
from banditgate.supervisor import check_heartbeats
from banditgate_app.demo.analysis import Served, reward_to_policy, summarise, timeline
from banditgate_app.demo.backend import serve_classifier
from banditgate_app.demo.reviews import SCENARIOS, make_review

Progress = Callable[[int, float, int], None]


@dataclass
class DemoOptions:
    requests: int = 10_000
    scenario: str = "seed"
    seed: int = 0
    concurrency: int = 16
    reward_delay_s: tuple[float, float] = (0.05, 1.0)
    policy: dict[str, Any] = field(default_factory=dict)
    window_s: float = 10.0
    startup_timeout_s: float = 90.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def demo_spec(name: str, urls: dict[str, str], options: DemoOptions) -> dict[str, Any]:
    policy: dict[str, Any] = {
        "learner": "vw",
        "update": {"every_events": 200, "every_s": 5},
        "min_arm_share": 0.01,
    }
    policy.update(options.policy)
    sizes = {"bert-1": "base", "bert-2": "large"}
    return {
        "name": name,
        "mode": "bandit",
        "description": f"banditgate demo, {options.scenario} scenario",
        "arms": [
            {
                "name": arm,
                "url": url,
                "protocol": "sagemaker",
                "features": {"size": sizes.get(arm, arm)},
            }
            for arm, url in urls.items()
        ],
        "context": {"text": "features[0]"},
        "policy": policy,
        "reward": {
            "window_s": options.window_s,
            "default": 0.0,
            "aggregation": "earliest",
            "min": 0,
            "max": 1,
        },
    }


@contextlib.asynccontextmanager
async def banditgate_server(
    spec_path: Path, url: str, data_dir: Path, name: str, timeout_s: float
) -> AsyncIterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "BANDITGATE_REDIS_URL": url,
        "BANDITGATE_DATA_DIR": str(data_dir),
        "BANDITGATE_EXPERIMENTS": name,
        "BANDITGATE_LOG_LEVEL": os.environ.get("BANDITGATE_LOG_LEVEL", "WARNING"),
    }
    log_file = (data_dir / "serve.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "banditgate_app.cli",
            "serve",
            "-f",
            str(spec_path),
            "--port",
            str(port),
        ],
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    redis = connect(url)
    try:
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as http:
            # Traffic starts once the whole loop is up: the router answers and the joiner
            # and trainer (serve's workers child, on this host) beat.
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"banditgate serve exited; see {data_dir / 'serve.log'}")
                if await _router_ready(http, base) and await _workers_live(redis):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"banditgate serve not ready in {timeout_s:.0f}s; see {data_dir / 'serve.log'}"
                    )
                await asyncio.sleep(0.2)
        yield base
    finally:
        await redis.aclose()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, 30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log_file.close()


async def _router_ready(http: aiohttp.ClientSession, base: str) -> bool:
    try:
        async with http.get(f"{base}/health/ready") as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def _workers_live(redis: Redis) -> bool:
    beats = await check_heartbeats(redis, ["joiner", "trainer"])
    return all(beat is not None for beat in beats.values())


async def send_traffic(
    base: str,
    name: str,
    options: DemoOptions,
    progress: Progress | None,
    version_of: Callable[[], int],
) -> list[Served]:
    rng = random.Random(options.seed)
    reviews = [make_review(rng) for _ in range(options.requests)]
    delays = [rng.uniform(*options.reward_delay_s) for _ in range(options.requests)]
    classifiers = SCENARIOS[options.scenario]
    served: list[Served | None] = [None] * options.requests
    limit = asyncio.Semaphore(options.concurrency)
    reward_tasks: set[asyncio.Task[None]] = set()
    failures: list[str] = []
    total_reward = 0.0
    done = 0
    connector = aiohttp.TCPConnector(limit=options.concurrency * 4)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def post_reward(event_id: str, value: float, delay: float) -> None:
            await asyncio.sleep(delay)
            body = {"event_id": event_id, "value": value, "experiment": name}
            for attempt in range(5):
                try:
                    async with http.post(f"{base}/v1/rewards", json=body) as response:
                        if response.status == 202:
                            return
                        failures.append(
                            f"reward {event_id}: HTTP {response.status} {await response.text()}"
                        )
                        return
                except aiohttp.ClientError as exc:
                    if attempt == 4:
                        failures.append(f"reward {event_id}: {exc}")
                    await asyncio.sleep(0.2 * (attempt + 1))

        async def one(index: int) -> None:
            nonlocal total_reward, done
            review = reviews[index]
            async with limit:
                started = time.perf_counter()
                async with http.post(
                    f"{base}/endpoints/{name}/invocations",
                    data=orjson.dumps({"features": [review.text]}),
                    headers={"Content-Type": "application/json"},
                ) as response:
                    payload = await response.read()
                    if response.status != 200:
                        failures.append(
                            f"request {index}: HTTP {response.status} {payload[:200]!r}"
                        )
                        return
                    latency = (time.perf_counter() - started) * 1000
                    event_id = response.headers["X-Banditgate-Event-Id"]
                    arm = response.headers["X-Amzn-Invoked-Production-Variant"]
            predicted = orjson.loads(payload)["predicted_label"]
            reward = 1.0 if predicted == review.rating else 0.0
            served[index] = Served(
                index=index,
                event_id=event_id,
                arm=arm,
                reward=reward,
                kind=review.kind,
                correct={c.name: c.correct(review.text) for c in classifiers},
                ts_ms=int(time.time() * 1000),
                latency_ms=latency,
            )
            task = asyncio.create_task(post_reward(event_id, reward, delays[index]))
            reward_tasks.add(task)
            task.add_done_callback(reward_tasks.discard)
            total_reward += reward
            done += 1
            if progress is not None:
                progress(done, total_reward / done, version_of())

        # A steady stream of requests: at most `concurrency` in flight, in order.
        pending: set[asyncio.Task[None]] = set()
        for index in range(options.requests):
            if len(pending) >= options.concurrency:
                finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    task.result()
            pending.add(asyncio.create_task(one(index)))
        if pending:
            for outcome in await asyncio.gather(*pending, return_exceptions=True):
                if isinstance(outcome, BaseException):
                    raise outcome
        while reward_tasks:
            await asyncio.gather(*list(reward_tasks))
    if failures:
        raise RuntimeError(f"{len(failures)} requests or rewards failed, first: {failures[0]}")
    return [s for s in served if s is not None]


async def attach_decisions(redis: Redis, name: str, served: list[Served]) -> dict[int, int]:
    """Fill each request's logged pmf and policy version; returns each version's first decision time."""
    by_event = {s.event_id: s for s in served}
    first: dict[int, int] = {}
    last = "-"
    while True:
        entries = await xrange_entries(redis, keys.decisions(name), start=last, count=500)
        if last != "-":
            entries = entries[1:]
        if not entries:
            break
        for entry_id, fields in entries:
            for decision in decode_decision_batch(fields):
                version = decision["policy_version"]
                first[version] = min(first.get(version, decision["ts_ms"]), decision["ts_ms"])
                row = by_event.get(decision["event_id"])
                if row is not None:
                    row.pmf = decision["pmf"]
                    row.arms = decision["arms"]
                    row.policy_version = version
            last = entry_id.decode()
    return first


async def joined_entries(redis: Redis, name: str) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    last = "-"
    while True:
        entries = await xrange_entries(redis, keys.joined(name), start=last, count=1000)
        if last != "-":
            entries = entries[1:]
        if not entries:
            return out
        for entry_id, fields in entries:
            out.append((entry_id.decode(), int(fields[JoinedField.JOINED_TS_MS.raw])))
        last = entries[-1][0].decode()


async def wait_for_joins(redis: Redis, name: str, expected: int, timeout_s: float = 30.0) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        count = int(await redis.xlen(keys.joined(name)))
        if count >= expected or time.monotonic() > deadline:
            return count
        await asyncio.sleep(0.2)


async def run_demo(
    options: DemoOptions,
    *,
    progress: Progress | None = None,
    status: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    if options.scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {options.scenario!r}; choose from {sorted(SCENARIOS)}")
    say = status or (lambda message: None)
    workdir = Path(tempfile.mkdtemp(prefix="banditgate-demo-"))
    embedded = None
    url = os.environ.get("BANDITGATE_REDIS_URL")
    if not url:
        embedded = await asyncio.to_thread(EmbeddedRedis, workdir / "redis")
        url = embedded.url
    name = f"demo-{options.scenario}-{uuid.uuid4().hex[:6]}"
    redis = connect(url)
    registry = PolicyRegistry(redis)
    current_version = 0

    async def watch_version(stop: asyncio.Event) -> None:
        nonlocal current_version
        while not stop.is_set():
            current_version = await registry.current_version(name) or 0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    try:
        classifiers = SCENARIOS[options.scenario]
        async with contextlib.AsyncExitStack() as stack:
            urls = {
                c.name: await stack.enter_async_context(serve_classifier(c)) for c in classifiers
            }
            spec = demo_spec(name, urls, options)
            spec_path = workdir / "spec.yaml"
            spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
            say(f"starting banditgate serve ({'embedded Redis' if embedded else url})")
            base = await stack.enter_async_context(
                banditgate_server(spec_path, url, workdir, name, options.startup_timeout_s)
            )
            say(f"serving experiment {name} at {base}")
            stop = asyncio.Event()
            watcher = asyncio.create_task(watch_version(stop))
            started = time.monotonic()
            try:
                served = await send_traffic(base, name, options, progress, lambda: current_version)
            finally:
                stop.set()
                await watcher
            elapsed = time.monotonic() - started
            say("waiting for the last rewards to be joined")
            joined_count = await wait_for_joins(redis, name, len(served))
            await asyncio.sleep(0.5)
        first_served = await attach_decisions(redis, name, served)
        versions = [v.__dict__ for v in await registry.versions(name)]
        joined_all = await joined_entries(redis, name)
        latencies = reward_to_policy(joined_all, versions, first_served)
        served.sort(key=lambda s: s.index)
        arms = [c.name for c in classifiers]
        summary = summarise(served, arms)
        summary.update(
            {
                "scenario": options.scenario,
                "seed": options.seed,
                "experiment": name,
                "policy_versions": len(versions),
                "reward_to_policy_s": statistics.median(latencies) if latencies else None,
                "reward_to_policy_p90_s": sorted(latencies)[int(0.9 * (len(latencies) - 1))]
                if latencies
                else None,
                # Rewards learned by a policy that then served traffic (the rest were in
                # rejected candidates or arrived after the last publish).
                "reward_to_policy_coverage": len(latencies) / len(joined_all)
                if joined_all
                else 0.0,
                "joined": joined_count,
                "elapsed_s": round(elapsed, 2),
                "requests_per_s": round(len(served) / elapsed, 1) if elapsed else None,
                "policy": spec["policy"],
            }
        )
        result = {"summary": summary, "timeline": timeline(served, arms)}
    finally:
        await redis.aclose()
        if embedded is not None:
            await asyncio.to_thread(embedded.close)
    # The scratch directory (embedded Redis, serve.log) is kept only when the run failed.
    shutil.rmtree(workdir, ignore_errors=True)
    return result
