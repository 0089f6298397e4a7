"""Control-plane changes reach a running router: arms, pause, end, resume (seen through /rank)."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from banditgate.featurize import arm_action_lines, example_lines
from banditgate.policy import new_workspace, workspace_to_bytes
from banditgate.redis import Redis
from banditgate.registry import PolicyRegistry
from banditgate.spec import parse_spec
from router.app import create_app
from router.settings import RouterSettings
from tests.experiments.conftest import Control, spec_doc
from tests.support import serve_asgi, wait_for


def trained_model(doc: dict[str, Any]) -> bytes:
    """A VW policy that learned b pays and a does not (arms a, b only)."""
    spec = parse_spec(doc)
    workspace = new_workspace(spec.policy)
    lines = arm_action_lines(spec.arms)
    for i in range(400):
        index = i % 2
        cost = -1.0 if spec.arms[index].name == "b" else 0.0
        workspace.learn(example_lines({}, lines, label=(index, cost, 0.5)))
    return workspace_to_bytes(workspace)


async def test_arms_pause_end_and_resume_reach_the_router(
    control: Control, redis: Redis, redis_url: str, name: str
) -> None:
    doc = spec_doc(name, policy={"exploration": {"type": "epsilon", "epsilon": 0.1}})
    await control.call("POST", "/v1/experiments", doc)
    registry = PolicyRegistry(redis)
    await registry.publish(name, trained_model(doc), learner="vw")

    router = create_app(RouterSettings(redis_url=redis_url, experiments=[name]))
    async with serve_asgi(router) as router_url, aiohttp.ClientSession() as http:

        async def rank() -> dict[str, Any]:
            async with http.post(
                f"{router_url}/v1/experiments/{name}/rank", data=orjson.dumps({"context": {}})
            ) as response:
                assert response.status == 200
                body = orjson.loads(await response.read())
            body["pmf"] = {r["id"]: r["probability"] for r in body["ranking"]}
            return body

        async def until(check: Any) -> dict[str, Any]:
            seen: dict[str, Any] = {}

            async def ready() -> bool:
                seen.update(await rank())
                return bool(check(seen))

            await wait_for(ready, timeout=10)
            return seen

        learned = await until(lambda r: r["policy_version"] == 1)
        assert learned["pmf"]["b"] > 0.9  # greedy on b, epsilon spread over the rest

        status, _ = await control.call(
            "POST", f"/v1/experiments/{name}/arms", {"name": "c", "url": "http://127.0.0.1:9/c"}
        )
        assert status == 201
        grown = await until(lambda r: set(r["pmf"]) == {"a", "b", "c"})
        assert grown["policy_version"] == 1  # the same model scores the new arm: no retraining
        assert max(grown["pmf"], key=grown["pmf"].get) == "b"
        assert grown["pmf"]["c"] > 0
        assert abs(sum(grown["pmf"].values()) - 1) < 1e-9

        status, _ = await control.call("DELETE", f"/v1/experiments/{name}/arms/a")
        assert status == 200
        shrunk = await until(lambda r: set(r["pmf"]) == {"b", "c"})
        assert shrunk["policy_version"] == 1
        assert shrunk["pmf"]["b"] > shrunk["pmf"]["c"]

        status, body = await control.call(
            "POST", f"/v1/experiments/{name}/pause", {"weights": {"b": 1, "c": 3}}
        )
        assert status == 200, body
        paused = await until(lambda r: abs(r["pmf"]["c"] - 0.75) < 1e-9)
        assert paused["pmf"]["b"] == 0.25

        await control.call("POST", f"/v1/experiments/{name}/end", {"winner": "c"})
        ended = await until(lambda r: r["pmf"]["c"] == 1.0)
        assert ended["chosen"] == "c"

        await control.call("POST", f"/v1/experiments/{name}/resume")
        resumed = await until(lambda r: r["pmf"]["b"] > 0.9)
        assert resumed["policy_version"] == 1
