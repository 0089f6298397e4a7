"""The Personalizer REST surface under /loops/{experiment}, driven by the real SDKs and raw HTTP.

`banditgate serve`'s app (router, reward intake and control plane on one port) on loopback;
the SDKs are synchronous, so they run in a thread beside the server's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from azure.ai.personalizer import PersonalizerAdministrationClient
from azure.ai.personalizer import PersonalizerClient as NewClient
from azure.cognitiveservices.personalizer import PersonalizerClient as V1Client
from azure.cognitiveservices.personalizer.models import RankableAction, RankRequest
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import HttpResponseError
from msrest.authentication import CognitiveServicesCredentials
from msrest.exceptions import HttpOperationError

from banditgate import keys
from banditgate.redis import Redis
from banditgate.registry import PolicyRegistry
from banditgate.spec import parse_spec
from banditgate.store import ExperimentStore
from banditgate_app.apps import serve_app
from tests.router.conftest import logged_decisions
from tests.router.test_policy_serving import trained_model
from tests.support import ADMIN_KEY, serve_asgi, wait_for

REWARD_KEY = "reward-key-1"

ACTIONS = [
    {"id": "NewsArticle", "features": [{"type": "News"}, {"length": 3}]},
    {"id": "SportsArticle", "features": [{"type": "Sports"}]},
    {"id": "EntertainmentArticle", "features": [{"type": "Entertainment"}]},
    {"id": "PoliticsArticle", "features": [{"type": "Politics"}]},
]
CONTEXT = [{"user": {"profileType": "AnonymousUser", "latLong": "47.6,-122.1"}}, {"tod": "day"}]


def spec_doc(name: str, **reward: Any) -> dict[str, Any]:
    return {
        "name": name,
        "arms": [
            {"name": "a", "url": "http://127.0.0.1:9"},
            {"name": "b", "url": "http://127.0.0.1:9"},
        ],
        "reward": {"window_s": 60, **reward},
    }


@contextlib.asynccontextmanager
async def served(
    redis: Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch, *specs: dict[str, Any]
) -> AsyncIterator[str]:
    for doc in specs:
        await ExperimentStore(redis).put(parse_spec(doc))
    monkeypatch.setenv("BANDITGATE_REDIS_URL", redis_url)
    monkeypatch.setenv("BANDITGATE_EXPERIMENTS", ",".join(doc["name"] for doc in specs))
    monkeypatch.setenv("BANDITGATE_ADMIN_KEYS", ADMIN_KEY)
    monkeypatch.setenv("BANDITGATE_REWARD_KEYS", REWARD_KEY)
    monkeypatch.setenv("BANDITGATE_DEFERRED_SWEEP_S", "0.1")
    # A test that stalls fails here with its traceback instead of holding the suite.
    async with asyncio.timeout(120), serve_asgi(serve_app(redis=redis)) as url:
        yield url


async def _decisions(redis: Redis, name: str, n: int) -> list[dict[str, Any]]:
    async def enough() -> bool:
        return len(await logged_decisions(redis, name)) >= n

    await wait_for(enough)
    return list(await logged_decisions(redis, name))


async def test_v1_sdk_rank_reward_with_exclusions(redis, redis_url, name, monkeypatch):
    async with served(redis, redis_url, monkeypatch, spec_doc(name)) as url:
        client = V1Client(f"{url}/loops/{name}", CognitiveServicesCredentials(REWARD_KEY))
        request = RankRequest(
            actions=[RankableAction(id=a["id"], features=a["features"]) for a in ACTIONS],
            context_features=CONTEXT,
            excluded_actions=["NewsArticle", "SportsArticle"],
            event_id="evt-1",
        )
        response = await asyncio.to_thread(client.rank, request)
        await asyncio.to_thread(client.events.reward, "evt-1", 0.75)
        rewards = await redis.xrange(keys.rewards(name))
    assert response.event_id == "evt-1"
    assert response.reward_action_id in ("EntertainmentArticle", "PoliticsArticle")
    ranking = [(r.id, r.probability) for r in response.ranking]
    assert ranking[0][0] == response.reward_action_id
    assert {n for n, _ in ranking[-2:]} == {"NewsArticle", "SportsArticle"}
    assert all(p == 0.0 for _, p in ranking[-2:])
    (decision,) = await _decisions(redis, name, 1)
    assert decision["event_id"] == "evt-1"
    assert decision["excluded"] == ["NewsArticle", "SportsArticle"]
    assert decision["pmf"][:2] == [0.0, 0.0]
    assert decision["context"] == {
        "user.profileType": "AnonymousUser",
        "user.latLong": "47.6,-122.1",
        "tod": "day",
    }
    assert decision["action_features"][0] == {"type": "News", "length": 3}
    assert [(f[b"id"], float(f[b"v"])) for _, f in rewards] == [(b"evt-1", 0.75)]


async def test_v1_sdk_errors_are_personalizers(redis, redis_url, name, monkeypatch):
    async with served(redis, redis_url, monkeypatch, spec_doc(name)) as url:
        client = V1Client(f"{url}/loops/{name}", CognitiveServicesCredentials(REWARD_KEY))
        bad = RankRequest(
            actions=[RankableAction(id="a", features=[{"x": 1}])], excluded_actions=["zzz"]
        )
        with pytest.raises(Exception) as raised:
            await asyncio.to_thread(client.rank, bad)
        with pytest.raises(HttpOperationError) as never_ranked:
            await asyncio.to_thread(client.events.reward, "never-ranked", 1.0)
        wrong_key = V1Client(f"{url}/loops/{name}", CognitiveServicesCredentials("nope"))
        with pytest.raises(HttpOperationError) as unauthorized:
            await asyncio.to_thread(wrong_key.events.reward, "x", 1.0)
    error = raised.value.error.error  # type: ignore[attr-defined]
    assert error.code == "InvalidRankRequest"
    assert "'zzz' is not one of the request's actions" in error.message
    assert never_ranked.value.response.status_code == 400
    body = never_ranked.value.response.json()
    assert body["error"]["code"] == "InvalidRewardRequest"
    assert "never ranked" in body["error"]["message"]
    assert unauthorized.value.response.status_code == 401
    assert await logged_decisions(redis, name) == []


async def test_deferred_activation(redis, redis_url, name, monkeypatch):
    short = f"{name}-s"
    async with served(
        redis, redis_url, monkeypatch, spec_doc(name), spec_doc(short, window_s=0.3)
    ) as url:
        client = V1Client(f"{url}/loops/{name}", CognitiveServicesCredentials(REWARD_KEY))
        actions = [RankableAction(id=a["id"], features=a["features"]) for a in ACTIONS]
        await asyncio.to_thread(
            client.rank, RankRequest(actions=actions, event_id="d-1", defer_activation=True)
        )
        await asyncio.sleep(0.05)
        assert await logged_decisions(redis, name) == []
        # A reward before activation is accepted (the event is known) but not joined yet.
        await asyncio.to_thread(client.events.reward, "d-1", 1.0)
        await asyncio.to_thread(client.events.activate, "d-1")
        (decision,) = await _decisions(redis, name, 1)
        with pytest.raises(HttpOperationError) as twice:
            await asyncio.to_thread(client.events.activate, "d-1")

        other = V1Client(f"{url}/loops/{short}", CognitiveServicesCredentials(REWARD_KEY))
        for n in range(3):
            await asyncio.to_thread(
                other.rank, RankRequest(actions=actions, event_id=f"n-{n}", defer_activation=True)
            )

        async def dropped() -> bool:
            count = await redis.hget(keys.join_counters(short), "events_never_activated")
            return count is not None and int(count) == 3

        await wait_for(dropped, timeout=5)
        with pytest.raises(HttpOperationError) as late:
            await asyncio.to_thread(other.events.activate, "n-0")
        # Reads need a key once keys are set: /metrics too.
        bearer = {"authorization": f"Bearer {ADMIN_KEY}"}
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{url}/metrics", headers=bearer) as response,
        ):
            metrics = await response.text()
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{url}/v1/experiments/{short}/stats", headers=bearer) as response,
        ):
            stats = await response.json()
    assert decision["event_id"] == "d-1"
    assert twice.value.response.json()["error"]["code"] == "InvalidEventIdToActivate"
    assert late.value.response.status_code == 400
    assert await logged_decisions(redis, short) == []
    assert await redis.hlen(keys.deferred(short)) == 0
    assert (
        f'banditgate_router_deferred_never_activated_total{{experiment="{short}"}} 3.0' in metrics
    )
    assert b'"events_never_activated":3' in orjson.dumps(stats)


async def test_new_sdk_single_and_multi_slot(redis, redis_url, name, monkeypatch):
    async with served(redis, redis_url, monkeypatch, spec_doc(name)) as url:
        client = NewClient(f"{url}/loops/{name}", AzureKeyCredential(REWARD_KEY))
        ranked = await asyncio.to_thread(
            client.rank,
            {"contextFeatures": CONTEXT, "actions": ACTIONS, "eventId": "s-1"},
        )
        await asyncio.to_thread(client.reward, "s-1", {"value": 0.5})
        multi = await asyncio.to_thread(
            client.rank_multi_slot,
            {
                "eventId": "m-1",
                "contextFeatures": CONTEXT,
                "actions": ACTIONS,
                "slots": [
                    {"id": "Main", "baseAction": "NewsArticle", "features": [{"size": "Large"}]},
                    {
                        "id": "Side",
                        "baseAction": "SportsArticle",
                        "features": [{"size": "Small"}],
                        "excludedActions": ["PoliticsArticle"],
                    },
                    {"id": "Foot", "baseAction": "PoliticsArticle"},
                ],
            },
        )
        await asyncio.to_thread(
            client.reward_multi_slot,
            "m-1",
            {"reward": [{"slotId": "Main", "value": 1.0}, {"slotId": "Side", "value": 0.0}]},
        )
        deferred = await asyncio.to_thread(
            client.rank_multi_slot,
            {
                "eventId": "m-2",
                "deferActivation": True,
                "actions": ACTIONS,
                "slots": [{"id": "Main", "baseAction": "NewsArticle"}],
            },
        )
        await asyncio.to_thread(client.activate_multi_slot, "m-2")
        rewards = await redis.xrange(keys.rewards(name))
    assert ranked["eventId"] == "s-1"
    assert ranked["rewardActionId"] == ranked["ranking"][0]["id"]
    assert multi["eventId"] == "m-1"
    chosen = [slot["rewardActionId"] for slot in multi["slots"]]
    assert [slot["id"] for slot in multi["slots"]] == ["Main", "Side", "Foot"]
    assert len(set(chosen)) == 3
    assert chosen[1] != "PoliticsArticle"
    assert deferred["slots"][0]["id"] == "Main"
    decisions = {d["event_id"]: d for d in await _decisions(redis, name, 5)}
    assert set(decisions) == {"s-1", "m-1/Main", "m-1/Side", "m-1/Foot", "m-2/Main"}
    side = decisions["m-1/Side"]
    assert side["chosen"] == chosen[1]
    assert side["context"]["slot.id"] == "Side"
    assert side["context"]["slot.size"] == "Small"
    assert side["pmf"][side["arms"].index(chosen[0])] == 0.0
    assert side["pmf"][side["arms"].index("PoliticsArticle")] == 0.0
    assert abs(sum(side["pmf"]) - 1) < 1e-9
    foot = decisions["m-1/Foot"]
    assert sum(1 for p in foot["pmf"] if p > 0) == 2  # four actions, two taken
    assert [(f[b"id"], float(f[b"v"])) for _, f in rewards] == [
        (b"s-1", 0.5),
        (b"m-1/Main", 1.0),
        (b"m-1/Side", 0.0),
    ]


async def test_configuration_round_trip_and_model(redis, redis_url, name, monkeypatch):
    async with served(redis, redis_url, monkeypatch, spec_doc(name)) as url:
        admin = PersonalizerAdministrationClient(
            f"{url}/loops/{name}", AzureKeyCredential(ADMIN_KEY)
        )
        before = await asyncio.to_thread(admin.get_service_configuration)
        after = await asyncio.to_thread(
            admin.update_service_configuration,
            {
                **before,
                "rewardWaitTime": "PT10M",
                "defaultReward": 0.1,
                "rewardAggregation": "average",
                "explorationPercentage": 0.2,
                "modelExportFrequency": "PT1M",
                "logRetentionDays": 30,
            },
        )
        policy = await asyncio.to_thread(
            admin.update_policy,
            {
                "name": "custom",
                "arguments": "--cb_explore_adf --epsilon 0.3 --power_t 0 -l 0.005 "
                "--cb_type mtr -q ::",
            },
        )
        spec = await ExperimentStore(redis).get(name)
        with pytest.raises(HttpResponseError) as no_model:
            await asyncio.to_thread(lambda: b"".join(admin.export_model()))
        model = trained_model(spec, best="b")
        await asyncio.to_thread(admin.import_model, io.BytesIO(model))
        exported = await asyncio.to_thread(lambda: b"".join(admin.export_model()))
        with pytest.raises(HttpResponseError) as bad_model:
            await asyncio.to_thread(admin.import_model, io.BytesIO(b"not a model"))
        version = await PolicyRegistry(redis).current_version(name)
        wrong = PersonalizerAdministrationClient(f"{url}/loops/{name}", AzureKeyCredential("x"))
        with pytest.raises(HttpResponseError) as refused:
            await asyncio.to_thread(
                wrong.update_policy, {"name": "x", "arguments": "--cb_explore_adf"}
            )
    assert before["rewardWaitTime"] == "PT1M"
    assert after["rewardWaitTime"] == "PT10M"
    assert after["defaultReward"] == 0.1
    assert after["rewardAggregation"] == "average"
    assert after["explorationPercentage"] == 0.2
    assert after["modelExportFrequency"] == "PT1M"
    assert after["logRetentionDays"] == 30
    assert spec.reward.window_s == 600
    assert spec.reward.aggregation == "mean"
    assert spec.policy.exploration.epsilon == 0.3
    assert spec.policy.learning_rate == 0.005
    assert spec.policy.vw_args == "--power_t 0"
    assert spec.policy.update.every_s == 60
    assert "--epsilon 0.3" in policy["arguments"]
    assert no_model.value.status_code == 404
    assert exported == model
    assert version == 1
    assert bad_model.value.status_code == 400
    assert bad_model.value.error.code == "InvalidModelImportFormat"  # type: ignore[union-attr]
    assert refused.value.status_code == 403


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "words"),
    [
        ("v1.0/rank", {"actions": []}, 400, "InvalidRankRequest", "non-empty"),
        ("v1.0/rank", {"actions": [{"id": "a"}], "foo": 1}, 400, "InvalidRankRequest", "foo"),
        ("v1.0/rank", {"actions": [{"id": "a" * 257}]}, 400, "InvalidRankRequest", "256"),
        (
            "v1.0/rank",
            {"actions": [{"id": str(n)} for n in range(51)]},
            400,
            "InvalidRankRequest",
            "at most 50",
        ),
        (
            "v1.0/rank",
            {"actions": [{"id": "a"}], "eventId": "e" * 257},
            400,
            "InvalidRankRequest",
            "eventId",
        ),
        (
            "v1.0/rank",
            {"actions": [{"id": "a"}], "contextFeatures": [{"a": 1}, "x"]},
            400,
            "InvalidRankRequest",
            "contextFeatures[1]",
        ),
        (
            "v1.0/rank",
            {"actions": [{"id": "a"}, {"id": "a"}]},
            400,
            "InvalidRankRequest",
            "duplicate",
        ),
        (
            "v1.1-preview.3/multislot/rank",
            {"actions": [{"id": "a"}, {"id": "b"}], "slots": [{"id": "s"}]},
            400,
            "InvalidRankRequest",
            "baseAction: required",
        ),
        (
            "v1.1-preview.3/multislot/rank",
            {
                "actions": [{"id": "a"}, {"id": "b"}],
                "slots": [{"id": "s", "baseAction": "a"}, {"id": "s", "baseAction": "b"}],
            },
            400,
            "InvalidRankRequest",
            "duplicate slot id",
        ),
        (
            "v1.1-preview.3/multislot/rank",
            {
                "actions": [{"id": "a"}, {"id": "b"}],
                "slots": [{"id": "s", "baseAction": "a"}, {"id": "t", "baseAction": "b"}],
                "eventId": "ok",
            },
            201,
            None,
            None,
        ),
        (
            "v1.1-preview.3/multislot/rank",
            {
                "actions": [{"id": "a"}, {"id": "b"}, {"id": "c"}],
                "slots": [
                    {"id": "s", "baseAction": "a", "excludedActions": ["b", "c"]},
                    {"id": "t", "baseAction": "a", "excludedActions": ["b", "c"]},
                ],
            },
            400,
            "InvalidRankRequest",
            "no action is left",
        ),
        ("v1.0/multislot/rank", {}, 404, "ResourceNotFound", "no route"),
        ("v1.0/evaluations", {}, 404, "ResourceNotFound", "no route"),
        ("v1.0/events/nope/activate", None, 400, "InvalidEventIdToActivate", "not waiting"),
        (
            "v1.1-preview.3/multislot/events/ok/reward",
            {"reward": [{"slotId": "s", "value": 1}, {"slotId": "t", "value": 7}]},
            400,
            "InvalidRewardRequest",
            "reward range",
        ),
        (
            "v1.1-preview.3/multislot/events/ok/reward",
            {"reward": [{"slotId": "zz", "value": 1}]},
            400,
            "InvalidRewardRequest",
            "never ranked",
        ),
        ("v1.0/events/ok/reward", {"value": "x"}, 400, "InvalidRewardRequest", "number"),
    ],
)
async def test_raw_http_bad_input(
    redis, redis_url, name, monkeypatch, path, body, status, code, words
):
    headers = {"Ocp-Apim-Subscription-Key": REWARD_KEY}
    async with (
        served(redis, redis_url, monkeypatch, spec_doc(name)) as url,
        aiohttp.ClientSession() as http,
    ):
        if "reward" in path:
            await http.post(
                f"{url}/loops/{name}/personalizer/v1.1-preview.3/multislot/rank",
                json={
                    "actions": [{"id": "a"}, {"id": "b"}],
                    "slots": [{"id": "s", "baseAction": "a"}, {"id": "t", "baseAction": "b"}],
                    "eventId": "ok",
                },
            )
            await _decisions(redis, name, 2)
        before = len(await redis.xrange(keys.rewards(name)))
        n_before = len(await logged_decisions(redis, name))
        async with http.post(
            f"{url}/loops/{name}/personalizer/{path}",
            data=b"" if body is None else orjson.dumps(body),
            headers=headers,
        ) as response:
            got = response.status
            answer = await response.read()
        await asyncio.sleep(0.05)
        assert len(await redis.xrange(keys.rewards(name))) == before
        if status != 201:
            assert len(await logged_decisions(redis, name)) == n_before
    assert got == status, answer
    if code is not None:
        error = orjson.loads(answer)["error"]
        assert error["code"] == code
        assert words in error["message"]


async def test_unknown_experiment_is_resource_not_found(redis, redis_url, name, monkeypatch):
    async with (
        served(redis, redis_url, monkeypatch, spec_doc(name)) as url,
        aiohttp.ClientSession() as http,
        http.post(
            f"{url}/loops/nope/personalizer/rank?api-version=2022-09-01-preview",
            json={"actions": [{"id": "a"}]},
        ) as response,
    ):
        body = await response.json()
    assert response.status == 404
    assert body["error"]["code"] == "ResourceNotFound"


async def test_configuration_errors_change_nothing(redis, redis_url, name, monkeypatch):
    admin = {"Ocp-Apim-Subscription-Key": ADMIN_KEY}
    base = f"/loops/{name}/personalizer/v1.0/configurations"
    async with (
        served(redis, redis_url, monkeypatch, spec_doc(name)) as url,
        aiohttp.ClientSession() as http,
    ):
        before = await ExperimentStore(redis).version(name)
        answers = []
        for method, path, body in (
            ("PUT", "/service", {"rewardWaitTime": "ten minutes"}),
            ("PUT", "/service", {"defaultReward": 5}),
            ("PUT", "/policy", {"name": "p", "arguments": "--cb_explore_adf --marginal x"}),
        ):
            async with http.request(method, url + base + path, json=body, headers=admin) as r:
                answers.append((r.status, (await r.json())["error"]))
        async with http.get(
            f"{url}/loops/nope/personalizer/v1.0/configurations/service", headers=admin
        ) as r:
            missing = (r.status, (await r.json())["error"])
        after = await ExperimentStore(redis).version(name)
    assert answers[0][0] == 400
    assert answers[0][1]["code"] == "InvalidServiceConfiguration"
    assert "rewardWaitTime" in answers[0][1]["message"]
    assert answers[1][1]["code"] == "InvalidServiceConfiguration"
    assert "default must lie within" in answers[1][1]["message"]
    assert answers[2][1]["code"] == "InvalidPolicyConfiguration"
    assert "--marginal" in answers[2][1]["message"]
    assert missing[0] == 404 and missing[1]["code"] == "ResourceNotFound"
    assert before == after
