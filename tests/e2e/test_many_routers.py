"""Three `banditgate router` processes on one Redis behind a round-robin client.

Every decision is logged once whichever router took it, every router serves a newly
published policy after its one announcement, and the per-process counters add up.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp

from banditgate.registry import PolicyRegistry
from banditgate.store import ExperimentStore
from tests.e2e.test_serve import free_port, ready
from tests.router.conftest import logged_decisions
from tests.router.test_policy_serving import trained_model
from tests.support import make_spec, run_backend, wait_for

ROUTERS = 3
REQUESTS = 300


def _counter(metrics: str, name: str) -> float:
    match = re.search(rf"^{name}(?:_total)? ([0-9.e+]+)$", metrics, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_three_routers_log_every_decision_once_and_swap_on_one_announcement(
    redis, redis_url, name, tmp_path: Path
):
    async with run_backend() as a, run_backend() as b:
        spec = make_spec(name, [("a", a.url), ("b", b.url)])
        await ExperimentStore(redis).put(spec)
        env = {
            **os.environ,
            "BANDITGATE_REDIS_URL": redis_url,
            "BANDITGATE_EXPERIMENTS": name,
            "BANDITGATE_DATA_DIR": str(tmp_path / "data"),
        }
        ports = [free_port() for _ in range(ROUTERS)]
        processes = [
            subprocess.Popen(
                [sys.executable, "-m", "banditgate_app.cli", "router", "--port", str(port)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for port in ports
        ]
        bases = [f"http://127.0.0.1:{port}" for port in ports]
        try:
            for base, process in zip(bases, processes, strict=True):
                await wait_for(lambda b=base, p=process: ready(b, p), timeout=60, every=0.2)
            async with aiohttp.ClientSession() as http:
                turn = itertools.cycle(bases)

                async def round_robin(count: int) -> list[tuple[str, str]]:
                    out = []
                    for _ in range(count):
                        base = next(turn)
                        async with http.post(
                            f"{base}/endpoints/{name}/invocations", json={"features": ["fine"]}
                        ) as response:
                            assert response.status == 200
                            out.append((base, response.headers["x-banditgate-event-id"]))
                    return out

                sent = await round_robin(REQUESTS)
                await wait_for(lambda: _logged(redis, name, REQUESTS), timeout=30)
                await PolicyRegistry(redis).publish(
                    name, trained_model(spec, best="b"), learner="vw", source="test"
                )

                async def all_on_version_1() -> bool:
                    versions = []
                    for base in bases:
                        async with http.get(f"{base}/health/ready") as response:
                            body = await response.json()
                        versions.append(body["experiments"][name]["policy_version"])
                    return versions == [1] * ROUTERS

                await wait_for(all_on_version_1, timeout=30, every=0.1)
                after = await round_robin(30)
                await wait_for(lambda: _logged(redis, name, REQUESTS + 30), timeout=30)
                swaps = []
                for base in bases:
                    async with http.get(f"{base}/metrics") as response:
                        swaps.append(
                            _counter(await response.text(), "banditgate_router_policy_swaps")
                        )
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                await asyncio.to_thread(process.wait, 30)
    assert [p.returncode for p in processes] == [0] * ROUTERS
    decisions = await logged_decisions(redis, name)
    event_ids = [d["event_id"] for d in decisions]
    assert len(event_ids) == len(set(event_ids)) == REQUESTS + 30
    assert set(event_ids) == {event for _, event in sent + after}
    assert {base for base, _ in sent} == set(bases)  # each router took a third
    # The announcement reached every router once: one swap each, three in all.
    assert swaps == [1.0] * ROUTERS and sum(swaps) == ROUTERS
    assert {d["policy_version"] for d in decisions[REQUESTS:]} == {1}
    assert {d["policy_version"] for d in decisions[:REQUESTS]} == {0}


async def _logged(redis, name, n) -> bool:  # type: ignore[no-untyped-def]
    return len(await logged_decisions(redis, name)) >= n
