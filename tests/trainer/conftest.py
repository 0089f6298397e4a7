from __future__ import annotations

import random
import time
from typing import Any

import orjson

from banditgate import keys
from banditgate.events import Decision
from banditgate.redis import Redis


def decision(
    name: str,
    event_id: str,
    arms: list[str],
    pmf: list[float],
    chosen: str,
    context: dict[str, Any] | None = None,
) -> Decision:
    return {
        "event_id": event_id,
        "experiment": name,
        "ts_ms": int(time.time() * 1000),
        "policy_version": 0,
        "mode": "bandit",
        "context": context or {},
        "arms": arms,
        "pmf": pmf,
        "chosen": chosen,
        "forced": False,
        "status": 200,
        "latency_ms": 1.0,
    }


async def write_joined(redis: Redis, name: str, rows: list[tuple[Decision, float]]) -> None:
    """Joined entries exactly as the joiner writes them."""
    async with redis.pipeline(transaction=False) as pipe:
        for d, reward in rows:
            pipe.xadd(
                keys.joined(name),
                {
                    "d": orjson.dumps(d),
                    "r": repr(reward),
                    "rw": "1",
                    "n": 1,
                    "jt": int(time.time() * 1000),
                },
            )
        await pipe.execute()


def uniform_log(
    name: str,
    n: int,
    accuracy: dict[str, float],
    seed: int = 0,
    context_of=None,  # type: ignore[no-untyped-def]
) -> list[tuple[Decision, float]]:
    """Decisions logged by a uniform policy, rewarded 1 with each arm's accuracy."""
    rng = random.Random(seed)
    arms = list(accuracy)
    rows = []
    for i in range(n):
        chosen = rng.choice(arms)
        context = context_of(i, rng) if context_of else {}
        acc = accuracy[chosen] if not callable(accuracy[chosen]) else accuracy[chosen](context)
        reward = 1.0 if rng.random() < acc else 0.0
        rows.append(
            (
                decision(name, f"e{seed}-{i}", arms, [1 / len(arms)] * len(arms), chosen, context),
                reward,
            )
        )
    return rows
