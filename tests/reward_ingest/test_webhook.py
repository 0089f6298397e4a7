"""The reward webhook over real loopback HTTP, against real Redis."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from banditgate import keys
from banditgate.events import decode_reward
from reward_ingest.settings import IngestSettings
from tests.reward_ingest.conftest import counters, decision, joined_examples, log_decisions


async def post(url: str, body: Any, *, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = {"content-type": "application/json", **(headers or {})}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=data, headers=headers) as response,
    ):
        return response.status, orjson.loads(await response.read())


async def rewards_in(redis, stream: str) -> list[dict[str, Any]]:
    return [decode_reward(fields) for _, fields in await redis.xrange(stream)]  # type: ignore[misc]


async def test_one_reward_naming_its_experiment(ingest_url, experiment, redis, name):
    await experiment()
    url = await ingest_url()
    status, body = await post(
        f"{url}/v1/rewards", {"event_id": "e-1", "value": 0.5, "experiment": name}
    )
    assert status == 202
    assert body == {"accepted": 1, "unrouted": 0, "rejected": 0, "errors": []}
    (reward,) = await rewards_in(redis, keys.rewards(name))
    assert reward["event_id"] == "e-1"
    assert reward["value"] == 0.5


async def test_event_route_and_query_experiment(ingest_url, experiment, redis, name):
    await experiment()
    url = await ingest_url()
    status, body = await post(f"{url}/v1/events/evt%2F7/reward?experiment={name}", {"value": 1})
    assert status == 202 and body["accepted"] == 1
    (reward,) = await rewards_in(redis, keys.rewards(name))
    assert reward["event_id"] == "evt/7"
    assert reward["value"] == 1.0


async def test_reward_resolved_through_the_event_index(ingest_url, experiment, redis, name, clock):
    await experiment()
    await log_decisions(redis, [decision(name, "known-1", clock.ms)])
    url = await ingest_url()
    status, body = await post(f"{url}/v1/rewards", {"event_id": "known-1", "value": 0.25})
    assert status == 202
    assert body["unrouted"] == 0
    assert [r["event_id"] for r in await rewards_in(redis, keys.rewards(name))] == ["known-1"]


async def test_unknown_event_id_goes_to_the_unrouted_stream(ingest_url, redis, name):
    url = await ingest_url()
    event_id = f"not-flushed-yet-{name}"
    status, body = await post(f"{url}/v1/rewards", {"event_id": event_id, "value": 3.0})
    assert status == 202
    assert body["accepted"] == 1 and body["unrouted"] == 1
    unrouted = await rewards_in(redis, keys.UNROUTED_REWARDS)
    assert [r["value"] for r in unrouted if r["event_id"] == event_id] == [3.0]


async def test_batch_answers_per_item_and_keeps_the_good_ones(ingest_url, experiment, redis, name):
    await experiment(min=0, max=1)
    url = await ingest_url()
    items = [
        {"event_id": "ok-1", "value": 1},
        {"event_id": "bad-range", "value": 2},
        {"event_id": "bad-type", "value": "1.0"},
        "not an object",
        {"event_id": "", "value": 0},
        {"event_id": "ok-2", "value": 0.0},
        {"event_id": "no-value"},
        {"event_id": "bool", "value": True},
        {"event_id": "other", "value": 0.5, "experiment": "no-such-experiment"},
    ]
    status, body = await post(f"{url}/v1/rewards?experiment={name}", {"rewards": items})
    assert status == 202
    assert body["accepted"] == 2 and body["rejected"] == 7
    errors = {error["index"]: error for error in body["errors"]}
    assert errors[1]["field"] == "rewards[1].value" and "outside [0, 1]" in errors[1]["message"]
    assert errors[2]["field"] == "rewards[2].value" and "number" in errors[2]["message"]
    assert errors[3]["field"] == "rewards[3]"
    assert errors[4]["field"] == "rewards[4].event_id"
    assert errors[6]["field"] == "rewards[6].value"
    assert errors[7]["field"] == "rewards[7].value"
    assert (
        errors[8]["type"] == "UnknownExperiment" and errors[8]["field"] == "rewards[8].experiment"
    )
    assert [r["event_id"] for r in await rewards_in(redis, keys.rewards(name))] == ["ok-1", "ok-2"]
    assert int(await redis.hget(keys.join_counters(name), "rewards_invalid")) == 1


async def test_json_lines(ingest_url, experiment, redis, name):
    await experiment()
    url = await ingest_url()
    lines = b'{"event_id": "l-1", "value": 1}\n{oops\n\n{"event_id": "l-2", "value": -1}\n'
    status, body = await post(
        f"{url}/v1/rewards?experiment={name}",
        lines,
        headers={"content-type": "application/x-ndjson"},
    )
    assert status == 202
    assert body["accepted"] == 2
    assert body["errors"][0]["index"] == 1 and body["errors"][0]["type"] == "MalformedJSON"
    assert [r["value"] for r in await rewards_in(redis, keys.rewards(name))] == [1.0, -1.0]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b'"0.5"', "must be a number"),
        (b"null", "must be a number"),
        (b"true", "must be a number"),
        (b"NaN", "must be finite"),
        (b"-Infinity", "must be finite"),
        (b"1e400", "must be finite"),
        (b"11", "outside [-10, 10]"),
    ],
)
async def test_bad_value_is_422_naming_the_field(
    ingest_url, experiment, redis, name, value, reason
):
    await experiment()
    url = await ingest_url()
    raw = b'{"event_id": "e", "experiment": "%s", "value": %s}' % (name.encode(), value)
    status, body = await post(f"{url}/v1/rewards", raw)
    assert status == 422
    assert body["error"]["field"] == "value"
    assert reason in body["error"]["message"]
    status, body = await post(
        f"{url}/v1/events/e/reward?experiment={name}", b'{"value": %s}' % value
    )
    assert status == 422
    assert body["error"]["field"] == "value"
    assert await redis.xlen(keys.rewards(name)) == 0


async def test_malformed_json_is_400(ingest_url):
    url = await ingest_url()
    status, body = await post(f"{url}/v1/rewards", b'{"event_id": "e", "value": ')
    assert status == 400
    assert body["error"]["type"] == "MalformedJSON" and body["error"]["field"] == "body"
    status, body = await post(f"{url}/v1/rewards", b"{\n  broken\n}")
    assert status == 400


async def test_unknown_named_experiment_is_404(ingest_url):
    url = await ingest_url()
    status, body = await post(
        f"{url}/v1/rewards", {"event_id": "e", "value": 1, "experiment": "nope"}
    )
    assert status == 404 and body["error"]["type"] == "UnknownExperiment"
    status, body = await post(
        f"{url}/v1/rewards?experiment=nope", {"rewards": [{"event_id": "e", "value": 1}]}
    )
    assert status == 404 and body["error"]["field"] == "experiment"


async def test_batch_over_the_limit_is_413_and_writes_nothing(ingest_url, experiment, redis, name):
    await experiment()
    url = await ingest_url(max_batch=3)
    items = [{"event_id": f"e{i}", "value": 1} for i in range(4)]
    status, body = await post(f"{url}/v1/rewards?experiment={name}", {"rewards": items})
    assert status == 413 and body["error"]["type"] == "PayloadTooLarge"
    assert await redis.xlen(keys.rewards(name)) == 0
    status, _ = await post(f"{url}/v1/rewards?experiment={name}", {"rewards": items[:3]})
    assert status == 202


async def test_body_over_the_byte_limit_is_413(ingest_url, experiment, name):
    await experiment()
    url = await ingest_url(max_body_bytes=100)
    status, body = await post(f"{url}/v1/rewards", {"event_id": "x" * 200, "value": 1})
    assert status == 413
    assert body["error"]["type"] == "PayloadTooLarge"


async def test_batch_with_nothing_accepted_is_an_error_with_details(ingest_url, experiment, name):
    await experiment()
    url = await ingest_url()
    status, body = await post(
        f"{url}/v1/rewards?experiment={name}", [{"event_id": "a", "value": "x"}]
    )
    assert status == 422
    assert body["accepted"] == 0
    assert body["error"]["field"] == "rewards[0].value"
    assert body["errors"][0]["index"] == 0


async def test_reward_keys(ingest_url, experiment, redis, name, monkeypatch):
    await experiment()
    monkeypatch.setenv("BANDITGATE_REWARD_KEYS", "k-one, k-two")
    assert [k.get_secret_value() for k in IngestSettings().reward_keys] == ["k-one", "k-two"]
    url = await ingest_url()
    reward = {"event_id": "e", "value": 1, "experiment": name}
    status, body = await post(f"{url}/v1/rewards", reward)
    assert status == 401 and body["error"]["type"] == "Unauthorized"
    status, body = await post(
        f"{url}/v1/rewards", reward, headers={"authorization": "Bearer k-three"}
    )
    assert status == 401
    status, _ = await post(
        f"{url}/v1/events/e/reward", {"value": 1}, headers={"authorization": "Basic k-one"}
    )
    assert status == 401
    assert await redis.xlen(keys.rewards(name)) == 0
    status, _ = await post(f"{url}/v1/rewards", reward, headers={"authorization": "Bearer k-two"})
    assert status == 202
    assert await redis.xlen(keys.rewards(name)) == 1


async def test_reward_keys_file(ingest_url, experiment, name, tmp_path):
    await experiment()
    keys_file = tmp_path / "keys"
    keys_file.write_text("# reward keys\nfile-key\n")
    url = await ingest_url(reward_keys_file=keys_file)
    reward = {"event_id": "e", "value": 1, "experiment": name}
    assert (await post(f"{url}/v1/rewards", reward))[0] == 401
    assert (await post(f"{url}/v1/rewards", reward, headers={"authorization": "Bearer file-key"}))[
        0
    ] == 202


async def test_a_full_batch_of_ten_thousand(ingest_url, experiment, redis, name, clock):
    await experiment()
    await log_decisions(redis, [decision(name, f"d{i}", clock.ms) for i in range(5000)])
    url = await ingest_url()
    # Half resolved through the event index, half named; every one accepted.
    items = [{"event_id": f"d{i}", "value": 0.5} for i in range(5000)]
    items += [{"event_id": f"n{i}", "value": 1, "experiment": name} for i in range(5000)]
    status, body = await post(f"{url}/v1/rewards", {"rewards": items})
    assert status == 202
    assert body == {"accepted": 10_000, "unrouted": 0, "rejected": 0, "errors": []}
    assert await redis.xlen(keys.rewards(name)) == 10_000


async def test_duplicate_reward_under_earliest_is_accepted_counted_and_trained_once(
    ingest_url, experiment, make_joiner, redis, name, clock
):
    await experiment(aggregation="earliest", window_s=60)
    await log_decisions(redis, [decision(name, "dup", clock.ms)])
    url = await ingest_url()
    for value in (1.0, 0.0):
        status, body = await post(f"{url}/v1/events/dup/reward", {"value": value})
        assert status == 202 and body["accepted"] == 1
    await make_joiner().run_once()
    (example,) = await joined_examples(redis, name)
    assert example["reward"] == 1.0 and example["n_rewards"] == 1
    c = await counters(redis, name)
    assert c["rewards_received"] == 2 and c["rewards_joined"] == 1 and c["rewards_duplicate"] == 1
