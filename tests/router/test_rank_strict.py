"""Our own rank route honours every part of the request, or refuses it naming the part."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from banditgate.errors import InvalidSpec
from banditgate.spec import parse_spec
from tests.router.conftest import logged_decisions
from tests.support import wait_for

ACTIONS = [
    {"id": "NewsArticle", "features": [{"type": "News"}, {"len": 3}]},
    {"id": "SportsArticle", "features": {"type": "Sports"}},
    {"id": "EntertainmentArticle", "features": [{"type": "Entertainment"}]},
]


def rank_spec(name: str) -> Any:
    return parse_spec(
        {
            "name": name,
            "arms": [
                {"name": "a", "url": "http://127.0.0.1:9"},
                {"name": "b", "url": "http://127.0.0.1:9"},
            ],
        }
    )


async def _rank(url: str, name: str, body: Any) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}/v1/experiments/{name}/rank", json=body) as response,
    ):
        return response.status, await response.json()


async def test_context_list_features_list_exclusions_and_event_id(start_router, redis, name):
    url, _ = await start_router(rank_spec(name))
    chosen = []
    for n in range(12):
        status, body = await _rank(
            url,
            name,
            {
                "context": [{"user": {"tier": "gold"}}, {"device": "mobile"}],
                "actions": ACTIONS,
                "excludedActions": ["NewsArticle", "SportsArticle"],
                "eventId": f"client-{n}",
            },
        )
        assert status == 200, body
        assert body["event_id"] == f"client-{n}"
        chosen.append(body["chosen"])
        ranking = body["ranking"]
        assert [r["id"] for r in ranking][-2:] in (
            ["NewsArticle", "SportsArticle"],
            ["SportsArticle", "NewsArticle"],
        )
        assert {r["id"]: r["probability"] for r in ranking}["NewsArticle"] == 0.0
    assert set(chosen) == {"EntertainmentArticle"}
    await wait_for(lambda: _count(redis, name, 12))
    decisions = {d["event_id"]: d for d in await logged_decisions(redis, name)}
    first = decisions["client-0"]
    assert first["context"] == {"user.tier": "gold", "device": "mobile"}
    assert first["arms"] == ["NewsArticle", "SportsArticle", "EntertainmentArticle"]
    assert first["pmf"] == [0.0, 0.0, 1.0]
    assert first["excluded"] == ["NewsArticle", "SportsArticle"]
    assert first["action_features"][0] == {"type": "News", "len": 3}


async def test_exclusion_keeps_the_policy_pmf_over_the_rest(start_router, redis, name):
    url, _ = await start_router(rank_spec(name))
    status, body = await _rank(url, name, {"excluded_actions": ["a"], "event_id": "x-1"})
    assert status == 200
    assert body["chosen"] == "b"
    assert body["ranking"] == [{"id": "b", "probability": 1.0}, {"id": "a", "probability": 0.0}]
    status, body = await _rank(url, name, {"context": {"k": 1}, "event_id": "x-2"})
    assert sorted(r["probability"] for r in body["ranking"]) == [0.5, 0.5]


@pytest.mark.parametrize(
    ("body", "status", "field", "words"),
    [
        ({"contxt": {}, "extra": 1}, 400, "contxt", "unknown keys ['contxt', 'extra']"),
        ({"excludedActions": ["zzz"]}, 422, "excludedActions[0]", "not one of"),
        ({"excluded_actions": ["a", "b"]}, 422, "excluded_actions", "every action"),
        ({"context": [{"a": 1}, 3]}, 422, "context[1]", "an object"),
        ({"context": "text"}, 422, "context", "object or a list"),
        ({"actions": [{"id": "x", "features": [1]}]}, 422, "actions[0].features[0]", "object"),
        ({"actions": [{"id": "x", "featurs": {}}]}, 400, "actions[0].featurs", "unknown"),
        ({"event_id": "a", "eventId": "b"}, 422, "eventId", "not both"),
        ({"eventId": ""}, 400, "eventId", "event id"),
        ({"defer_activation": True}, 400, "defer_activation", "Personalizer"),
    ],
)
async def test_bad_rank_requests_name_the_field_and_log_nothing(
    start_router, redis, name, body, status, field, words
):
    url, app = await start_router(rank_spec(name))
    got, answer = await _rank(url, name, body)
    assert got == status, answer
    assert answer["error"]["field"] == field
    assert words in answer["error"]["message"]
    assert app.log.pending == 0
    await app.log.flush_once()
    assert await logged_decisions(redis, name) == []


async def _count(redis, name, n):  # type: ignore[no-untyped-def]
    return len(await logged_decisions(redis, name)) >= n


async def test_arms_without_backends_rank_and_refuse_forwarding(start_router, redis, name):
    spec = parse_spec({"name": name, "arms": [{"name": "red"}, {"name": "blue"}]})
    assert spec.rank_only
    url, _ = await start_router(spec)
    status, body = await _rank(url, name, {"context": {"k": "v"}, "event_id": "r-1"})
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}/endpoints/{name}/invocations", json={"a": 1}) as response,
    ):
        refused = await response.json()
    assert status == 200
    assert body["chosen"] in ("red", "blue")
    assert response.status == 400
    assert "arms without a backend url" in str(refused)  # in the SageMaker error shape
    (decision,) = await _wait_decisions(redis, name, 1)
    assert decision["event_id"] == "r-1"


def test_shadow_mode_needs_backends():
    with pytest.raises(InvalidSpec, match=r"arms\[1\]\.url"):
        parse_spec(
            {
                "name": "s",
                "mode": "shadow",
                "arms": [{"name": "a", "url": "http://127.0.0.1:9"}, {"name": "b"}],
                "shadow": {"primary": "a", "shadows": ["b"]},
            }
        )


async def _wait_decisions(redis, name, n):  # type: ignore[no-untyped-def]
    await wait_for(lambda: _count(redis, name, n))
    return await logged_decisions(redis, name)
