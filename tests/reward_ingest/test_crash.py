"""Kill joiner processes with SIGKILL at random moments; every decision is still joined once."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from banditgate import keys
from banditgate.store import ExperimentStore
from tests.reward_ingest.conftest import (
    add_reward,
    by_event,
    counters,
    decision,
    joined_examples,
    log_decisions,
    reward_spec,
)
from tests.support import wait_for

DECISIONS = 10_000
ROOT = Path(__file__).resolve().parents[2]


def spawn_joiner(
    redis_url: str, experiment: str, consumer: str, data_dir: Path
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "BANDITGATE_REDIS_URL": redis_url,
        "BANDITGATE_DATA_DIR": str(data_dir),
        "BANDITGATE_EXPERIMENTS": experiment,
        "BANDITGATE_JOIN_CONSUMER": consumer,
        "BANDITGATE_JOIN_CLAIM_IDLE_MS": "300",
        "BANDITGATE_JOIN_REFRESH_S": "0.1",
        "BANDITGATE_JOIN_MAX_BLOCK_MS": "100",
        "BANDITGATE_JOIN_DECISION_ENTRIES": "2",
        "BANDITGATE_JOIN_REWARD_BATCH": "150",
        "BANDITGATE_JOIN_CLOCK_SKEW_MS": "50",
        "BANDITGATE_LOG_LEVEL": "WARNING",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "banditgate_app.cli", "workers", "--only", "joiner"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def test_sigkill_at_random_moments_loses_nothing_and_duplicates_nothing(
    redis, redis_url, name, data_dir
):
    rng = random.Random(20240531)
    await ExperimentStore(redis).put(
        reward_spec(name, aggregation="sum", window_s=3.0, backward_window_s=6.0)
    )
    expected: dict[str, list[float]] = defaultdict(list)
    processes: list[subprocess.Popen[bytes]] = []
    kills = pauses = 0
    consumer_names = [f"crash-{i}" for i in range(4)]

    def start() -> None:
        # Reusing a few names: a restart under an old name re-applies its own pending
        # entries; a restart under a new one takes over a dead one's after the claim time.
        processes.append(spawn_joiner(redis_url, name, rng.choice(consumer_names), data_dir))

    async def write() -> None:
        written = 0
        while written < DECISIONS:
            size = min(rng.randint(20, 200), DECISIONS - written)
            now_ms = int(time.time() * 1000)
            batch = [decision(name, f"{name}-{written + i}", now_ms) for i in range(size)]
            rewarded = [d["event_id"] for d in batch if rng.random() < 0.6]
            early = [event_id for event_id in rewarded if rng.random() < 0.1]
            plan = {
                event_id: [rng.randint(-8, 8) * 0.25 for _ in range(rng.randint(1, 3))]
                for event_id in rewarded
            }
            for event_id in early:  # rewards that arrive before their decision is logged
                for value in plan[event_id]:
                    await add_reward(redis, name, event_id, value, now_ms)
            await log_decisions(redis, batch, index=False)
            for event_id in rewarded:
                if event_id not in early:
                    for value in plan[event_id]:
                        await add_reward(redis, name, event_id, value, int(time.time() * 1000))
            for event_id, values in plan.items():
                expected[event_id].extend(values)
            written += size
            await asyncio.sleep(rng.random() * 0.02)

    async def kill_repeatedly(until: asyncio.Event) -> None:
        nonlocal kills, pauses
        start()
        start()
        step = 0
        while not until.is_set() or kills < 8:
            await asyncio.sleep(0.25 + rng.random() * 0.6)
            victim = processes[rng.choice([i for i, p in enumerate(processes) if p.poll() is None])]
            step += 1
            if step % 4 == 2:
                # A stall longer than the claim time (a VM pause, a long GC): another joiner
                # takes its batch over, then the stalled one wakes up and tries to apply it.
                victim.send_signal(signal.SIGSTOP)
                await asyncio.sleep(0.5 + rng.random() * 0.5)
                victim.send_signal(signal.SIGCONT)
                pauses += 1
                continue
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            kills += 1
            start()

    async def all_joined() -> bool:
        return (await counters(redis, name)).get("joined", 0) >= DECISIONS

    writing_done = asyncio.Event()
    killer = asyncio.create_task(kill_repeatedly(writing_done))
    try:
        await write()
        await asyncio.sleep(1.5)  # keep killing while windows close
        writing_done.set()
        await killer
        await wait_for(all_joined, timeout=90, every=0.2)
        await asyncio.sleep(0.3)  # any duplicate emission would show up by now
    finally:
        writing_done.set()
        killer.cancel()
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()

    assert kills >= 8 and pauses >= 2
    for process in processes:
        # Every process ended by SIGKILL or, at the end, by SIGTERM without a traceback.
        errors = process.stderr.read().decode() if process.stderr else ""
        assert "Traceback" not in errors, errors
    joined = by_event(await joined_examples(redis, name))  # raises on a duplicate
    assert len(joined) == DECISIONS
    for event_id, example in joined.items():
        values = expected.get(event_id, [])
        assert example["rewarded"] is bool(values), event_id
        assert example["n_rewards"] == len(values), event_id
        assert example["reward"] == (sum(values) if values else 0.0), event_id
    c = await counters(redis, name)
    assert c["decisions_received"] == DECISIONS and c["joined"] == DECISIONS
    total_rewards = sum(len(values) for values in expected.values())
    assert c["rewards_received"] == c["rewards_joined"] == total_rewards
    assert (
        c.get("rewards_late", 0)
        == c.get("rewards_orphaned", 0)
        == c.get("rewards_duplicate", 0)
        == 0
    )
    # Nothing is left behind in the join state.
    assert await redis.hlen(keys.join_pending(name)) == 0
    assert await redis.hlen(keys.join_early(name)) == 0
