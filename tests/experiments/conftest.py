from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from pydantic import SecretStr

from banditgate import keys
from banditgate.events import Decision, decision_batch_fields
from banditgate.redis import Redis
from experiments.app import create_control_app
from experiments.settings import ControlSettings
from tests.support import serve_asgi

ADMIN_KEY = "test-admin-key"


@dataclass
class Control:
    """A control plane served on loopback, and a client for it."""

    url: str
    http: aiohttp.ClientSession
    app: Any

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = ADMIN_KEY,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, Any]:
        sent = dict(headers or {})
        if key is not None:
            sent["authorization"] = f"Bearer {key}"
        data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
        if data is not None:
            sent.setdefault("content-type", "application/json")
        async with self.http.request(method, self.url + path, data=data, headers=sent) as response:
            text = await response.read()
            content_type = response.headers.get("content-type", "")
            parsed = orjson.loads(text) if text and "json" in content_type else text.decode()
            return response.status, parsed

    async def get(self, path: str) -> Any:
        """GET without a key (reads are open); the status must be 200."""
        status, body = await self.call("GET", path, key=None)
        assert status == 200, body
        return body


@pytest.fixture
async def control(redis_url: str) -> AsyncIterator[Control]:
    settings = ControlSettings(redis_url=redis_url, admin_keys=[SecretStr(ADMIN_KEY)])
    app = create_control_app(settings)
    async with serve_asgi(app) as url, aiohttp.ClientSession() as http:
        yield Control(url, http, app)


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
