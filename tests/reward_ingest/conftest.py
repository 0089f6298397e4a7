from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from banditgate import keys
from banditgate.events import (
    Decision,
    Joined,
    decision_batch_fields,
    decode_joined,
    event_index_bucket,
    reward_fields,
)
from banditgate.redis import Redis, connect
from banditgate.spec import ExperimentSpec
from banditgate.store import ExperimentStore
from reward_ingest.app import create_ingest_app
from reward_ingest.settings import IngestSettings
from reward_ingest.worker import Joiner
from tests.support import make_spec, serve_asgi


class Clock:
    """The joiner's clock, moved by the test (seconds, like time.time)."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    @property
    def ms(self) -> int:
        return int(self.now * 1000)


def decision(
    experiment: str,
    event_id: str,
    ts_ms: int,
    *,
    arms: tuple[str, ...] = ("bert-1", "bert-2"),
    chosen: str = "bert-1",
    pmf: list[float] | None = None,
    context: dict[str, Any] | None = None,
    **extra: Any,
) -> Decision:
    record: Decision = {
        "event_id": event_id,
        "experiment": experiment,
        "ts_ms": ts_ms,
        "policy_version": 0,
        "mode": "bandit",
        "context": context if context is not None else {"t.len": "15", "h.x-segment": "gold"},
        "arms": list(arms),
        "pmf": pmf or [1 / len(arms)] * len(arms),
        "chosen": chosen,
        "forced": False,
        "status": 200,
        "latency_ms": 1.5,
    }
    record.update(extra)  # type: ignore[typeddict-item]
    return record


async def log_decisions(redis: Redis, decisions: list[Decision], *, index: bool = True) -> None:
    """As the router's decision log writes them: one batch entry, plus the event index."""
    experiment = decisions[0]["experiment"]
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xadd(keys.decisions(experiment), decision_batch_fields(decisions))  # type: ignore[arg-type]
        if index:
            for item in decisions:
                bucket = keys.event_index(event_index_bucket(item["ts_ms"]))
                pipe.hset(bucket, item["event_id"], experiment)
                pipe.expire(bucket, 3600)
        await pipe.execute()


async def add_reward(
    redis: Redis, experiment: str, event_id: str, value: float, ts_ms: int
) -> None:
    fields = reward_fields({"event_id": event_id, "value": value, "ts_ms": ts_ms})
    await redis.xadd(keys.rewards(experiment), fields)  # type: ignore[arg-type]


async def joined_examples(redis: Redis, experiment: str) -> list[Joined]:
    return [decode_joined(fields) for _, fields in await redis.xrange(keys.joined(experiment))]


def by_event(examples: list[Joined]) -> dict[str, Joined]:
    out: dict[str, Joined] = {}
    for example in examples:
        event_id = example["decision"]["event_id"]
        assert event_id not in out, f"{event_id} joined twice"
        out[event_id] = example
    return out


async def counters(redis: Redis, experiment: str) -> dict[str, int]:
    raw = await redis.hgetall(keys.join_counters(experiment))
    return {key.decode(): int(value) for key, value in raw.items()}


async def audit(redis: Redis, experiment: str) -> list[dict[str, str]]:
    entries = await redis.xrange(keys.join_late(experiment))
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]


def reward_spec(name: str, **reward: Any) -> ExperimentSpec:
    reward = {"window_s": 1.0, "min": -10, "max": 10, "backward_window_s": 2.0, **reward}
    return make_spec(
        name, [("bert-1", "http://127.0.0.1:9"), ("bert-2", "http://127.0.0.1:9")], reward=reward
    )


@pytest.fixture(autouse=True)
async def forget_experiments(redis_url: str, name: str) -> AsyncIterator[None]:
    """Delete this test's experiments (and with them their streams) when it ends, so
    components that serve every experiment, in later tests, do not find them."""
    yield
    client = connect(redis_url)
    try:
        store = ExperimentStore(client)
        for experiment in await store.names():
            if experiment == name or experiment.startswith(f"{name}-"):
                await store.delete(experiment)
    finally:
        await client.aclose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def settings(redis_url: str, data_dir: Any) -> IngestSettings:
    return IngestSettings(redis_url=redis_url, data_dir=data_dir, join_clock_skew_ms=0)


@pytest.fixture
def experiment(redis: Redis, name: str) -> Callable[..., Any]:
    """`await experiment(**reward)` stores the spec of experiment `name`."""

    async def create(**reward: Any) -> ExperimentSpec:
        spec = reward_spec(name, **reward)
        await ExperimentStore(redis).put(spec)
        return spec

    return create


@pytest.fixture
def make_joiner(
    redis: Redis, settings: IngestSettings, clock: Clock, name: str
) -> Callable[..., Joiner]:
    def make(**overrides: Any) -> Joiner:
        options: dict[str, Any] = {"consumer": "joiner-test", "clock": clock, "experiments": [name]}
        options.update(overrides)
        joiner_settings = options.pop("settings", settings)
        return Joiner(redis=redis, settings=joiner_settings, **options)

    return make


@pytest.fixture
async def ingest_url(
    redis: Redis, redis_url: str, data_dir: Any
) -> AsyncIterator[Callable[..., Any]]:
    """`await ingest_url(**settings)` serves the reward webhook on loopback; returns its URL."""
    stack = contextlib.AsyncExitStack()

    async def start(**options: Any) -> str:
        app = create_ingest_app(IngestSettings(redis_url=redis_url, data_dir=data_dir, **options))
        return await stack.enter_async_context(serve_asgi(app))

    try:
        yield start
    finally:
        await stack.aclose()
