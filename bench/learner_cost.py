"""What a learner costs per request: in process, and on the router, VW against the others.

    python bench/learner_cost.py [--duration 4] [--rounds 2] [--learners vw,linear_thompson]

1. In process: each learner trained on 5,000 examples of the demo's synthetic reviews
   (text features, two arms), then the time of one pmf for a context the policy has not
   cached (a new context) and for one it has (contexts repeat: features are bucketed).
2. On the router: one router process per learner, each serving one experiment whose
   policy is that trained model, driven in interleaved rounds by wrk with 1,000
   distinct reviews: req/s at 32 connections, CPU per request, p50/p99 at 1 connection.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from banditgate.featurize import Featurizer  # noqa: E402
from banditgate.policy import ActionSet, build_policy  # noqa: E402
from banditgate.redis import EmbeddedRedis, connect  # noqa: E402
from banditgate.registry import PolicyRegistry  # noqa: E402
from banditgate.spec import ExperimentSpec, parse_spec  # noqa: E402
from banditgate.store import ExperimentStore  # noqa: E402
from banditgate_app.demo.reviews import review_pool  # noqa: E402
from bench.router import cpu_seconds, free_port, wait_port, wrk, wrk_script  # noqa: E402
from trainer.learner import Example, new_learner  # noqa: E402


def spec_for(learner: str, backend_url: str) -> ExperimentSpec:
    return parse_spec(
        {
            "name": f"bench-{learner.replace('_', '-')}",
            "arms": [
                {"name": "bert-1", "url": backend_url, "protocol": "sagemaker"},
                {"name": "bert-2", "url": backend_url, "protocol": "sagemaker"},
            ],
            "context": {"text": "features[0]", "headers": ["x-segment"]},
            "policy": {"learner": learner},
        }
    )


def trained_model(spec: ExperimentSpec, n: int = 5000) -> bytes:
    """Arm 2 is better on long reviews, arm 1 on short ones."""
    rng = random.Random(3)
    featurizer = Featurizer(spec.context)
    actions = ActionSet.from_spec(spec)
    learner = new_learner(spec)
    reviews = review_pool(1000, seed=7)
    for i in range(n):
        review = reviews[i % len(reviews)]
        context = featurizer.from_request({"features": [review.text]}, {})
        chosen = rng.randrange(2)
        rate = (0.6 if chosen == 1 else 0.4) if review.kind == "long" else (0.4 if chosen else 0.6)
        reward = 1.0 if rng.random() < rate else 0.0
        learner.learn(Example(context, actions, chosen, 0.5, reward))
    return learner.model_bytes()


def in_process(learners: list[str]) -> None:
    print("| learner | pmf, new context | pmf, cached context | featurize |")
    print("|---|---|---|---|")
    reviews = review_pool(1000, seed=7)
    for learner in learners:
        spec = spec_for(learner, "http://127.0.0.1:9")
        model = trained_model(spec)
        featurizer = Featurizer(spec.context)
        actions = ActionSet.from_spec(spec)
        bodies = [{"features": [r.text]} for r in reviews]
        start = time.perf_counter()
        contexts = [featurizer.from_request(body, {}) for body in bodies]
        featurize_us = (time.perf_counter() - start) / len(bodies) * 1e6
        policy = build_policy(spec, model, 1)
        fresh = []
        for _ in range(3):
            start = time.perf_counter()
            for context in contexts:
                policy._cache.clear()  # type: ignore[attr-defined]
                policy.probabilities(context, actions)
            fresh.append((time.perf_counter() - start) / len(contexts) * 1e6)
        start = time.perf_counter()
        for _ in range(5):
            for context in contexts:
                policy.probabilities(context, actions)
        cached_us = (time.perf_counter() - start) / (5 * len(contexts)) * 1e6
        print(
            f"| {learner} | {statistics.median(fresh):.1f} us | {cached_us:.2f} us | "
            f"{featurize_us:.1f} us |",
            flush=True,
        )


async def publish(url: str, specs: list[ExperimentSpec]) -> None:
    redis = connect(url)
    try:
        for spec in specs:
            await ExperimentStore(redis).put(spec)
            await PolicyRegistry(redis).publish(
                spec.name, trained_model(spec), learner=spec.policy.learner, source="bench"
            )
    finally:
        await redis.aclose()


def on_router(learners: list[str], duration: float, rounds: int) -> None:
    embedded = None
    url = os.environ.get("BANDITGATE_REDIS_URL")
    if not url:
        embedded = EmbeddedRedis(Path(tempfile.mkdtemp()) / "redis")
        url = embedded.url
    backend_port = free_port()
    backend_url = f"http://127.0.0.1:{backend_port}"
    specs = [spec_for(learner, backend_url) for learner in learners]
    ports = {spec.policy.learner: free_port() for spec in specs}
    env = {**os.environ, "BANDITGATE_REDIS_URL": url, "PYTHONPATH": str(ROOT)}
    env["BANDITGATE_LOG_LEVEL"] = "WARNING"
    uvicorn = [sys.executable, "-m", "uvicorn", "--loop", "uvloop", "--http", "httptools"]
    uvicorn += ["--no-access-log", "--log-level", "warning", "--host", "127.0.0.1"]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        asyncio.run(publish(url, specs))
        processes.append(
            subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "fast_backend.py"), str(backend_port)],
                env=env,
            )
        )
        for spec in specs:
            processes.append(
                subprocess.Popen(
                    [
                        *uvicorn,
                        "--port",
                        str(ports[spec.policy.learner]),
                        "--factory",
                        "router.app:create_app",
                    ],
                    env={**env, "BANDITGATE_EXPERIMENTS": spec.name},
                    cwd=ROOT,
                )
            )
        wait_port(backend_port)
        for port in ports.values():
            wait_port(port)
        pids = {spec.policy.learner: p.pid for spec, p in zip(specs, processes[1:], strict=True)}
        workdir = Path(tempfile.mkdtemp())
        scripts = {}
        for spec in specs:
            scripts[spec.policy.learner] = workdir / f"{spec.name}.lua"
            wrk_script(scripts[spec.policy.learner], f"/endpoints/{spec.name}/invocations")
        for learner, port in ports.items():  # warm up
            wrk(port, scripts[learner], 32, 2, latency=False)
        results: list[dict[str, dict[str, float]]] = []
        for _ in range(rounds):
            row: dict[str, dict[str, float]] = {}
            for learner, port in ports.items():
                before = cpu_seconds(pids[learner])
                load = wrk(port, scripts[learner], 32, duration, latency=False)
                used = cpu_seconds(pids[learner]) - before
                single = wrk(port, scripts[learner], 1, duration, latency=True)
                row[learner] = {
                    "rps": load["rps"],
                    "cpu_us": used / max(load["rps"] * round(duration), 1) * 1e6,
                    "p50": single["p50"],
                    "p99": single["p99"],
                    "non2xx": load["non2xx"] + single["non2xx"],
                }
            results.append(row)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=20)
        if embedded is not None:
            embedded.close()
    print()
    print("| learner | req/s at 32 conns | CPU per request | p50 at 1 conn | p99 at 1 conn |")
    print("|---|---|---|---|---|")
    for learner in ports:

        def median(key: str, learner: str = learner) -> float:
            return statistics.median(r[learner][key] for r in results)

        print(
            f"| {learner} | {median('rps'):,.0f} | {median('cpu_us'):.0f} us | "
            f"{median('p50'):.3f} ms | {median('p99'):.3f} ms |"
        )
    print(f"non-2xx: {sum(r[t]['non2xx'] for r in results for t in r):.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--learners", default="vw,linear_thompson")
    parser.add_argument("--skip-router", action="store_true")
    args = parser.parse_args()
    learners = args.learners.split(",")
    in_process(learners)
    if not args.skip_router:
        on_router(learners, args.duration, args.rounds)


if __name__ == "__main__":
    main()
