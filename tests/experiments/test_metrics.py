from __future__ import annotations

import time
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from banditgate import keys
from banditgate.contracts import TRAINER_CHANGES
from banditgate.policy import BetaCounts
from banditgate.redis import Redis
from banditgate.registry import PolicyRegistry
from experiments.app import create_control_app
from experiments.settings import ControlSettings
from tests.experiments.conftest import (
    ADMIN_KEY,
    Control,
    decision,
    spec_doc,
    write_decisions,
    write_joined,
)
from tests.support import serve_asgi


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(scraped: dict[Any, float], metric: str, **labels: str) -> float:
    return scraped[(metric, tuple(sorted(labels.items())))]


async def scrape(url: str) -> str:
    auth = {"authorization": f"Bearer {ADMIN_KEY}"}
    async with (
        aiohttp.ClientSession() as http,
        http.get(url + "/metrics", headers=auth) as response,
    ):
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/plain")
        return await response.text()


async def test_metrics_report_traffic_rewards_policy_and_lag(
    control: Control, name: str, redis: Redis, redis_url: str
) -> None:
    await control.call("POST", "/v1/experiments", spec_doc(name, policy={"learner": "thompson"}))
    rows = [
        decision(name, "a", [0.5, 0.5], latency_ms=3.0),
        decision(name, "a", [0.5, 0.5], latency_ms=40.0),
        decision(name, "a", [0.5, 0.5], latency_ms=2000.0, status=504),
        decision(name, "b", [0.5, 0.5], latency_ms=8.0),
        decision(name, "b", [0.5, 0.5], latency_ms=8.0, status=404),
    ]
    await write_decisions(redis, name, rows[:2])
    await write_decisions(redis, name, rows[2:])
    await write_joined(redis, name, rows[0], 1.0)
    await write_joined(redis, name, rows[1], 0.0, rewarded=False)
    await write_joined(redis, name, rows[3], 0.25)
    await redis.hset(
        keys.join_counters(name),
        mapping={"rewards_received": 12, "rewards_late": 3, "rewards_orphaned": 2},
    )
    registry = PolicyRegistry(redis)
    for _ in range(3):
        await registry.publish(name, BetaCounts().to_bytes(), learner="thompson")
    # The joiner has read the first decision batch; the trainer none of the joined stream.
    await redis.xgroup_create(keys.decisions(name), "joiner", id="0")
    await redis.xreadgroup("joiner", "j1", {keys.decisions(name): ">"}, count=1)
    await redis.xgroup_create(keys.joined(name), "trainer", id="0")
    await redis.xgroup_create(keys.joined(name), "exporter", id="$")

    text = await scrape(control.url)
    m = samples(text)
    assert value(m, "banditgate_decisions_total", experiment=name, arm="a") == 3
    assert value(m, "banditgate_decisions_total", experiment=name, arm="b") == 2
    assert value(m, "banditgate_requests_total", experiment=name, arm="a", code="2xx") == 2
    assert value(m, "banditgate_requests_total", experiment=name, arm="a", code="5xx") == 1
    assert value(m, "banditgate_requests_total", experiment=name, arm="b", code="4xx") == 1
    assert value(m, "banditgate_errors_total", experiment=name, arm="a") == 1
    assert value(m, "banditgate_errors_total", experiment=name, arm="b") == 0
    histogram = "banditgate_request_latency_seconds"
    assert value(m, f"{histogram}_bucket", experiment=name, arm="a", le="0.005") == 1
    assert value(m, f"{histogram}_bucket", experiment=name, arm="a", le="0.05") == 2
    assert value(m, f"{histogram}_bucket", experiment=name, arm="a", le="2.5") == 3
    assert value(m, f"{histogram}_bucket", experiment=name, arm="a", le="+Inf") == 3
    assert value(m, f"{histogram}_count", experiment=name, arm="a") == 3
    assert value(m, f"{histogram}_sum", experiment=name, arm="a") == 2.043
    assert value(m, "banditgate_joined_total", experiment=name, arm="a") == 2
    assert value(m, "banditgate_joined_rewarded_total", experiment=name, arm="a") == 1
    assert value(m, "banditgate_reward_sum", experiment=name, arm="b") == 0.25
    assert value(m, "banditgate_reward_count", experiment=name, arm="b") == 1
    assert value(m, "banditgate_rewards_received_total", experiment=name) == 12
    assert value(m, "banditgate_rewards_late_total", experiment=name) == 3
    assert value(m, "banditgate_rewards_orphaned_total", experiment=name) == 2
    assert value(m, "banditgate_rewards_duplicate_total", experiment=name) == 0
    assert value(m, "banditgate_policy_version", experiment=name) == 3
    assert (
        value(m, "banditgate_experiment_info", experiment=name, mode="bandit", status="running")
        == 1
    )
    assert value(m, "banditgate_stream_length", experiment=name, stream="decisions") == 2
    lag = "banditgate_consumer_lag_entries"
    assert value(m, lag, experiment=name, stream="decisions", group="joiner") == 1
    assert value(m, lag, experiment=name, stream="joined", group="trainer") == 3
    assert value(m, lag, experiment=name, stream="joined", group="exporter") == 0
    assert (
        value(m, "banditgate_consumer_pending", experiment=name, stream="decisions", group="joiner")
        == 1
    )
    seconds = "banditgate_consumer_lag_seconds"
    assert value(m, seconds, experiment=name, stream="joined", group="exporter") == 0
    joiner_lag = value(m, "banditgate_joiner_lag_seconds", experiment=name)
    trainer_lag = value(m, "banditgate_trainer_lag_seconds", experiment=name)
    assert 0 <= joiner_lag < 600  # the undelivered batch was written moments ago
    assert trainer_lag == value(m, seconds, experiment=name, stream="joined", group="trainer")
    assert value(m, "banditgate_srm_flagged", experiment=name) == 0

    # A second control-plane process (another worker on the port) scrapes the same totals.
    other = create_control_app(
        ControlSettings(redis_url=redis_url, admin_keys=[SecretStr(ADMIN_KEY)])
    )
    async with serve_asgi(other) as other_url:
        again = samples(await scrape(other_url))
    for metric, arm in (("banditgate_decisions_total", "a"), ("banditgate_errors_total", "a")):
        assert value(again, metric, experiment=name, arm=arm) == value(
            m, metric, experiment=name, arm=arm
        )
    assert value(again, "banditgate_joined_total", experiment=name, arm="b") == 1


async def test_lag_seconds_is_the_age_of_the_oldest_undelivered_entry(
    control: Control, name: str, redis: Redis
) -> None:
    await control.call("POST", "/v1/experiments", spec_doc(name))
    now = int(time.time() * 1000)
    stale = decision(name, "a", [0.5, 0.5], ts_ms=now - 90_000)
    await redis.xadd(
        keys.decisions(name), {"n": 1, "b": orjson.dumps([stale])}, id=f"{now - 90_000}-0"
    )
    await redis.xgroup_create(keys.decisions(name), "joiner", id="0")
    m = samples(await scrape(control.url))
    lag = value(m, "banditgate_joiner_lag_seconds", experiment=name)
    assert 90 <= lag < 90 + 60


async def test_per_arm_load_for_autoscalers(control: Control, name: str, redis: Redis) -> None:
    """Requests per second, latency percentiles and load per declared instance, per arm,
    over the last full minute (the 10 s bucket in progress is left out)."""
    doc = spec_doc(name)
    doc["arms"][0]["instances"] = 4
    await control.call("POST", "/v1/experiments", doc)
    now = int(time.time() * 1000)
    last_full = now - now % 10_000 - 5_000  # inside the last complete bucket
    rows = [decision(name, "a", [0.5, 0.5], ts_ms=last_full, latency_ms=4.0)] * 117 + [
        decision(name, "a", [0.5, 0.5], ts_ms=last_full, latency_ms=900.0)
    ] * 3
    rows += [decision(name, "b", [0.5, 0.5], ts_ms=last_full - 20_000, latency_ms=30.0)] * 30
    rows += [decision(name, "b", [0.5, 0.5], ts_ms=now - 120_000)] * 50  # too old to count
    await write_decisions(redis, name, rows)
    m = samples(await scrape(control.url))
    assert value(m, "banditgate_arm_requests_per_second", experiment=name, arm="a") == 2.0
    assert value(m, "banditgate_arm_requests_per_second", experiment=name, arm="b") == 0.5
    assert value(m, "banditgate_arm_instances", experiment=name, arm="a") == 4
    assert value(m, "banditgate_arm_invocations_per_instance", experiment=name, arm="a") == 0.5
    assert ("banditgate_arm_instances", (("arm", "b"), ("experiment", name))) not in m
    p50 = value(m, "banditgate_arm_latency_p50_seconds", experiment=name, arm="a")
    p99 = value(m, "banditgate_arm_latency_p99_seconds", experiment=name, arm="a")
    assert 0.0025 <= p50 <= 0.005 and 0.5 <= p99 <= 1.0


async def test_changes_the_trainer_detected_are_counted(
    control: Control, name: str, redis: Redis
) -> None:
    await control.call("POST", "/v1/experiments", spec_doc(name))
    m = samples(await scrape(control.url))
    assert value(m, "banditgate_trainer_changes_detected_total", experiment=name) == 0
    # As the trainer counts them (tests/trainer/test_change.py drives a real detection).
    await redis.hincrby(keys.trainer_state(name), TRAINER_CHANGES, 2)
    m = samples(await scrape(control.url))
    assert value(m, "banditgate_trainer_changes_detected_total", experiment=name) == 2
