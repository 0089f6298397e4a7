"""Open Inference Protocol, pass-through proxy and decision-only rank."""

from __future__ import annotations

import aiohttp
import orjson

from banditgate.spec import parse_spec
from tests.router.conftest import logged_decisions
from tests.support import Backend, run_backend, wait_for


def spec_with(name: str, arms: list[dict], **extra) -> object:  # type: ignore[no-untyped-def]
    return parse_spec({"name": name, "arms": arms, **extra})


async def test_v2_infer_forwards_to_the_arms_model(start_router, redis, name):
    async with run_backend(Backend(label=5)) as backend:
        spec = spec_with(
            name,
            [{"name": "sk", "url": backend.url, "protocol": "v2", "model": "iris-lr"}],
            context={"body": ["parameters.segment"], "text": "inputs[0].data[0]"},
        )
        url, _ = await start_router(spec)
        request = {
            "id": "req-42",
            "parameters": {"segment": "gold"},
            "inputs": [
                {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["Terrible. Not good."]}
            ],
        }
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/v2/models/{name}/infer", json=request) as response:
                assert response.status == 200
                body = await response.json()
                assert response.headers["X-Banditgate-Event-Id"] == "req-42"
                assert response.headers["X-Banditgate-Variant"] == "sk"
            async with http.get(f"{url}/v2/models/{name}/ready") as response:
                assert response.status == 200
    assert backend.requests[0]["path"] == "/v2/models/iris-lr/infer"
    assert orjson.loads(backend.requests[0]["body"]) == request
    assert body["outputs"][0]["data"] == [5]
    await wait_for(lambda: _has(redis, name, 1))
    (decision,) = await logged_decisions(redis, name)
    assert decision["event_id"] == "req-42"
    assert decision["context"]["parameters.segment"] == "gold"
    assert decision["context"]["t.negation"] is True
    assert decision["context"]["t.neg"] == "1"


async def test_proxy_passes_path_query_body_and_headers(start_router, redis, name):
    async with run_backend() as backend:
        spec = spec_with(name, [{"name": "a", "url": backend.url, "protocol": "http"}])
        url, _ = await start_router(spec)
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{url}/proxy/{name}/score/v1?debug=1",
                data=b"raw,csv,bytes",
                headers={
                    "Content-Type": "text/csv",
                    "X-Tenant": "acme",
                    "X-Banditgate-Event-Id": "e-1",
                },
            ) as response,
        ):
            assert response.status == 200
            assert response.headers["X-Banditgate-Event-Id"] == "e-1"
            assert response.headers["X-Banditgate-Variant"] == "a"
    seen = backend.requests[0]
    assert seen["path"] == "/score/v1"
    assert seen["query"] == "debug=1"
    assert seen["body"] == b"raw,csv,bytes"
    assert seen["headers"]["x-tenant"] == "acme"
    assert seen["headers"]["content-type"] == "text/csv"
    assert seen["headers"]["x-banditgate-event-id"] == "e-1"
    await wait_for(lambda: _has(redis, name, 1))


async def test_rank_decides_without_forwarding(start_router, redis, name):
    async with run_backend() as backend:
        spec = spec_with(
            name, [{"name": "a", "url": backend.url}, {"name": "b", "url": backend.url}]
        )
        url, _ = await start_router(spec)
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{url}/v1/experiments/{name}/rank",
                json={"context": {"user": {"tier": "gold"}, "age": 31}, "event_id": "rank-1"},
            ) as response:
                assert response.status == 200
                ranked = await response.json()
            async with http.post(
                f"{url}/v1/experiments/{name}/rank",
                json={
                    "context": {"tier": "free"},
                    "actions": [{"id": "x", "features": {"price": 3}}, {"id": "y"}, {"id": "z"}],
                },
            ) as response:
                custom = await response.json()
    assert backend.requests == []
    assert ranked["event_id"] == "rank-1"
    assert ranked["chosen"] == ranked["ranking"][0]["id"]
    assert {r["id"] for r in ranked["ranking"]} == {"a", "b"}
    assert abs(sum(r["probability"] for r in ranked["ranking"]) - 1) < 1e-6
    assert ranked["policy_version"] == 0
    assert {r["id"] for r in custom["ranking"]} == {"x", "y", "z"}
    await wait_for(lambda: _has(redis, name, 2))
    decisions = {d["event_id"]: d for d in await logged_decisions(redis, name)}
    assert decisions["rank-1"]["context"] == {"user.tier": "gold", "age": 31.0}
    other = decisions[custom["event_id"]]
    assert other["arms"] == ["x", "y", "z"]
    assert other["action_features"] == [{"price": 3}, {}, {}]


async def _has(redis, name, n):  # type: ignore[no-untyped-def]
    return len(await logged_decisions(redis, name)) >= n
