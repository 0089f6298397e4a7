"""Redis Cluster against one Redis, in one run: routers, joiner and trainer.

    .venv/bin/python bench/cluster.py [--duration 5] [--rounds 2] [--decisions 40000]

Starts one plain redis-server and a local three-master Redis Cluster (tests/redis_cluster.py),
a near-free backend, and two `banditgate router` processes per Redis. Traffic (wrk, one
instance per router, 16 connections each: a round robin over the two routers) goes to
three experiments, so the cluster spreads their streams over its masters. Rounds alternate
the targets; decisions/s is what the routers answered, checked against what they logged.

Then, per Redis, one joiner joins `--decisions` logged decisions (half rewarded) and one
trainer learns the joined examples; both report examples per CPU second of their process.
The ratios (cluster / single) are the numbers to read: absolute ones move between runs
on a shared machine. Every server is stopped at the end.
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
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis as redis_sync  # noqa: E402

from banditgate import keys  # noqa: E402
from banditgate.events import decode_decision_batch  # noqa: E402
from banditgate.redis import connect  # noqa: E402
from banditgate.spec import parse_spec  # noqa: E402
from banditgate.store import ExperimentStore  # noqa: E402
from bench.joiner import prepare as prepare_join  # noqa: E402
from bench.router import free_port, parse_wrk, wait_port, wrk_script  # noqa: E402
from reward_ingest.settings import IngestSettings  # noqa: E402
from reward_ingest.worker import Joiner  # noqa: E402
from tests.redis_cluster import LocalCluster, free_ports, wait_ping  # noqa: E402
from trainer.worker import Trainer  # noqa: E402

EXPERIMENTS = ["bench-a", "bench-b", "bench-c"]
ROUTERS = 2


def spec_document(name: str, backend_url: str) -> dict[str, object]:
    return {
        "name": name,
        "mode": "bandit",
        "arms": [
            {"name": "bert-1", "url": backend_url, "features": {"size": "base"}},
            {"name": "bert-2", "url": backend_url, "features": {"size": "large"}},
        ],
        "context": {"text": "features[0]"},
        "policy": {"learner": "vw", "exploration": {"type": "cover"}},
    }


async def prepare_routing(url: str, backend_url: str) -> None:
    redis = connect(url)
    try:
        for name in EXPERIMENTS:
            await redis.delete(keys.decisions(name))
            await ExperimentStore(redis).put(parse_spec(spec_document(name, backend_url)))
    finally:
        await redis.aclose()


async def count_decisions(url: str) -> int:
    redis = connect(url)
    try:
        total = 0
        for name in EXPERIMENTS:
            for _, fields in await redis.xrange(keys.decisions(name)):
                total += len(decode_decision_batch(fields))
        return total
    finally:
        await redis.aclose()


def multi_path_script(path: Path) -> None:
    """wrk_script's bodies, with the path cycling over the experiments."""
    wrk_script(path, "/endpoints/__EXPERIMENT__/invocations")
    text = path.read_text()
    names = ", ".join(f'"{name}"' for name in EXPERIMENTS)
    text = text.replace(
        'wrk.format("POST", "/endpoints/__EXPERIMENT__/invocations"',
        'wrk.format("POST", "/endpoints/" .. names[(i % #names) + 1] .. "/invocations"',
    )
    path.write_text(f"local names = {{{names}}}\n" + text)


def wrk_both(ports: list[int], script: Path, duration: float) -> float:
    """One wrk per router, at once: a round robin by connection. Total req/s."""
    runs = [
        subprocess.Popen(
            [
                "wrk",
                "-t1",
                "-c16",
                f"-d{max(1, round(duration))}s",
                "-s",
                str(script),
                f"http://127.0.0.1:{port}",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for port in ports
    ]
    total = 0.0
    for run in runs:
        output, _ = run.communicate()
        result = parse_wrk(output)
        if result.get("non2xx"):
            raise RuntimeError(f"non-2xx answers: {output}")
        total += result["rps"]
    return total


def redis_cpu(ports: list[int]) -> float:
    """CPU seconds used so far by the redis-servers on `ports` (INFO cpu, main threads)."""
    total = 0.0
    for port in ports:
        info = redis_sync.Redis(port=port).info("cpu")
        total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return total


def start_routers(url: str, backend_url: str) -> tuple[list[subprocess.Popen[bytes]], list[int]]:
    env = {
        **os.environ,
        "BANDITGATE_REDIS_URL": url,
        "BANDITGATE_EXPERIMENTS": ",".join(EXPERIMENTS),
        "BANDITGATE_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
    }
    del backend_url
    ports = [free_port() for _ in range(ROUTERS)]
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "banditgate_app.cli", "router", "--port", str(port)],
            env=env,
        )
        for port in ports
    ]
    for port in ports:
        wait_port(port, timeout=60)
    time.sleep(1.0)  # policies loaded, watchers subscribed
    return processes, ports


async def learn(url: str, decisions: int, directory: Path) -> dict[str, float]:
    """One joiner, then one trainer, on `decisions` logged decisions: examples per CPU second."""
    redis = connect(url)
    experiment = f"bench-join-{os.getpid()}"
    try:
        args = SimpleNamespace(
            decisions=decisions, flush=500, rewarded=0.5, repeat=0.1, aggregation="earliest"
        )
        await prepare_join(redis, args, experiment)  # type: ignore[arg-type]
        joiner = Joiner(
            redis=redis,
            settings=IngestSettings(redis_url=url, data_dir=directory),
            experiments=[experiment],
            clock=lambda: time.time() + 120.0,
            resolve_unrouted=False,
        )
        cpu, wall = time.process_time(), time.perf_counter()
        await joiner.run_once()
        join_cpu, join_wall = time.process_time() - cpu, time.perf_counter() - wall
        joined = int(await redis.xlen(keys.joined(experiment)))
        assert joined == decisions, (joined, decisions)
        trainer = Trainer(redis=redis, experiments=[experiment])
        learned = 0
        cpu, wall = time.process_time(), time.perf_counter()
        while learned < joined:
            step = await trainer.run_once()
            if step == 0:
                break
            learned += step
        train_cpu, train_wall = time.process_time() - cpu, time.perf_counter() - wall
        return {
            "joined_per_cpu_s": decisions / join_cpu,
            "joined_per_s": decisions / join_wall,
            "learned": learned,
            "learned_per_cpu_s": learned / train_cpu,
            "learned_per_s": learned / train_wall,
        }
    finally:
        doomed = [
            key async for key in redis.scan_iter(match=keys.experiment_keys_pattern(experiment))
        ]
        if doomed:
            await redis.delete(*doomed)
        await redis.srem(keys.EXPERIMENTS, experiment)
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--decisions", type=int, default=40_000)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/cluster.py needs wrk (Debian package 'wrk')")
    directory = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    single_port = free_ports(1)[0]
    single = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(single_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
            "--loglevel",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
    )
    cluster = LocalCluster(masters=3)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        wait_ping(single_port)
        cluster.start()
        urls = {"single": f"redis://127.0.0.1:{single_port}/0", "cluster": cluster.url}
        backend_port = free_port()
        backend_url = f"http://127.0.0.1:{backend_port}"
        processes.append(
            subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "fast_backend.py"), str(backend_port)]
            )
        )
        wait_port(backend_port)
        script = directory / "post.lua"
        multi_path_script(script)
        rates: dict[str, list[float]] = {"single": [], "cluster": []}
        for _ in range(args.rounds):
            for target, url in urls.items():
                asyncio.run(prepare_routing(url, backend_url))
                routers, ports = start_routers(url, backend_url)
                servers = [single_port] if target == "single" else cluster.ports
                cpu_before = redis_cpu(servers)
                try:
                    rps = wrk_both(ports, script, args.duration)
                    used = redis_cpu(servers) - cpu_before
                finally:
                    for router in routers:
                        router.terminate()
                    for router in routers:
                        router.wait(30)
                logged = asyncio.run(count_decisions(url))
                sent = rps * max(1, round(args.duration))
                print(
                    f"{target:8s} {rps:8,.0f} decisions/s  (logged {logged:,}, ~{sent:,.0f} sent); "
                    f"Redis CPU {used:.2f} s: {logged / max(used, 1e-9):,.0f} decisions per "
                    "Redis CPU-second"
                )
                rates[target].append(rps)
        ratios = [c / s for c, s in zip(rates["cluster"], rates["single"], strict=True)]
        print(
            f"routing: 2 routers, 3 experiments: single {statistics.median(rates['single']):,.0f}/s, "
            f"cluster {statistics.median(rates['cluster']):,.0f}/s, "
            f"cluster/single {statistics.median(ratios):.2f} (per round: "
            + ", ".join(f"{r:.2f}" for r in ratios)
            + ")"
        )
        learned = {
            target: asyncio.run(learn(url, args.decisions, directory))
            for target, url in urls.items()
        }
        for target, result in learned.items():
            print(
                f"{target:8s} joiner {result['joined_per_cpu_s']:,.0f} decisions/CPU-s "
                f"({result['joined_per_s']:,.0f}/s wall); trainer {result['learned_per_cpu_s']:,.0f} "
                f"examples/CPU-s ({result['learned_per_s']:,.0f}/s wall, {result['learned']:,.0f} learned)"
            )
        for key, label in (("joined_per_cpu_s", "joiner"), ("learned_per_cpu_s", "trainer")):
            print(
                f"{label} per core, cluster/single: "
                f"{learned['cluster'][key] / learned['single'][key]:.2f}"
            )
    finally:
        for process in processes:
            process.terminate()
            process.wait()
        single.terminate()
        single.wait()
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
