from __future__ import annotations

import time
from typing import Any

import orjson

from banditgate import keys
from banditgate.events import Decision, decision_batch_fields
from banditgate.redis import Redis
from tests.support import ADMIN_KEY, Control

__all__ = ["ADMIN_KEY", "Control"]


def spec_doc(name: str, arms: tuple[str, ...] = ("a", "b"), **overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": name,
        "mode": "bandit",
        "arms": [{"name": arm, "url": f"http://127.0.0.1:9/{arm}"} for arm in arms],
    }
    doc.update(overrides)
    return doc


def decision(
    experiment: str,
    chosen: str,
    pmf: list[float],
    *,
    arms: tuple[str, ...] = ("a", "b"),
    ts_ms: int | None = None,
    event_id: str = "e",
    forced: bool = False,
    status: int = 200,
    latency_ms: float = 1.0,
    mode: str = "bandit",
    policy_version: int = 0,
) -> Decision:
    d: Decision = {
        "event_id": event_id,
        "experiment": experiment,
        "ts_ms": ts_ms if ts_ms is not None else int(time.time() * 1000),
        "policy_version": policy_version,
        "mode": mode,
        "context": {},
        "arms": list(arms),
        "pmf": pmf,
        "chosen": chosen,
        "forced": forced,
        "status": status,
        "latency_ms": latency_ms,
    }
    if status >= 500:
        d["error"] = "backend failed"
    return d


async def write_decisions(redis: Redis, experiment: str, decisions: list[Decision]) -> None:
    """One decision batch, as the router's log writes it."""
    await redis.xadd(keys.decisions(experiment), decision_batch_fields(decisions))  # type: ignore[arg-type]


async def write_joined(
    redis: Redis,
    experiment: str,
    d: Decision,
    reward: float,
    *,
    rewarded: bool = True,
    n_rewards: int = 1,
    joined_ms: int | None = None,
) -> None:
    """One joined example, in the encoding banditgate.events.decode_joined reads."""
    joined_ms = joined_ms if joined_ms is not None else int(time.time() * 1000)
    fields = {
        "d": orjson.dumps(d),
        "r": repr(float(reward)),
        "rw": b"1" if rewarded else b"0",
        "n": n_rewards if rewarded else 0,
        "jt": joined_ms,
    }
    await redis.xadd(keys.joined(experiment), fields)  # type: ignore[arg-type]
