"""The control plane under `banditgate serve`: behind the router on one port."""

from __future__ import annotations

import aiohttp
import orjson
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from banditgate.redis import Redis
from banditgate_app.apps import serve_app
from tests.experiments.conftest import ADMIN_KEY, decision, spec_doc, write_decisions
from tests.router.test_metrics import metric_values
from tests.support import serve_asgi


async def test_control_routes_answer_through_the_router(
    redis: Redis, redis_url: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BANDITGATE_REDIS_URL", redis_url)
    monkeypatch.setenv("BANDITGATE_ADMIN_KEYS", ADMIN_KEY)
    monkeypatch.setenv("BANDITGATE_EXPERIMENTS", name)
    app = serve_app(with_ingest=False)
    auth = {"authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/json"}
    async with serve_asgi(app) as url, aiohttp.ClientSession() as http:
        async with http.post(
            f"{url}/v1/experiments", data=orjson.dumps(spec_doc(name)), headers=auth
        ) as r:
            assert r.status == 201
        async with http.post(f"{url}/v1/experiments", data=orjson.dumps(spec_doc(name))) as r:
            assert r.status == 401  # the admin keys came from BANDITGATE_ADMIN_KEYS
        await write_decisions(redis, name, [decision(name, "a", [0.5, 0.5])])
        async with http.get(f"{url}/v1/experiments/{name}/stats", headers=auth) as r:
            assert r.status == 200
            assert (await r.json())["totals"]["decisions"] == 1
        async with http.get(f"{url}/dashboard/{name}", headers=auth) as r:
            assert r.status == 200
            assert name in await r.text()
        async with http.get(f"{url}/metrics", headers=auth) as r:
            text = await r.text()
        decisions = next(
            f for f in text_string_to_metric_families(text) if f.name == "banditgate_decisions"
        )
        mine = [
            (s.labels["arm"], s.value) for s in decisions.samples if s.labels["experiment"] == name
        ]
        assert mine == [("a", 1.0)]
        # The router's own counters are in the same answer.
        assert metric_values(text, "banditgate_router_decisions_dropped") == {(): 0.0}
        assert metric_values(text, "banditgate_router_policy_swaps") == {(): 0.0}
        async with http.get(f"{url}/health/live") as r:
            assert r.status == 200  # the router still owns its routes


async def test_serve_documents_the_spec_schema_too(redis: Redis) -> None:
    api = serve_app(redis=redis).api
    assert isinstance(api, FastAPI)
    doc = api.openapi()
    body = doc["paths"]["/v1/experiments"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"] == {"$ref": "#/components/schemas/ExperimentSpec"}
    assert "ExperimentSpec" in doc["components"]["schemas"]
