from __future__ import annotations

from typing import Any

import pytest

from banditgate.policy import BetaCounts
from banditgate.redis import Redis
from banditgate.registry import PolicyRegistry
from tests.experiments.conftest import Control, spec_doc

STATE_CHANGING = [
    ("POST", "/v1/experiments"),
    ("PUT", "/v1/experiments/{name}"),
    ("PATCH", "/v1/experiments/{name}"),
    ("DELETE", "/v1/experiments/{name}"),
    ("POST", "/v1/experiments/{name}/arms"),
    ("DELETE", "/v1/experiments/{name}/arms/a"),
    ("POST", "/v1/experiments/{name}/pause"),
    ("POST", "/v1/experiments/{name}/resume"),
    ("POST", "/v1/experiments/{name}/end"),
    ("POST", "/v1/experiments/{name}/versions/1/restore"),
    ("POST", "/v1/experiments/{name}/policies/1/activate"),
]


async def create(control: Control, doc: dict[str, Any]) -> dict[str, Any]:
    status, body = await control.call("POST", "/v1/experiments", doc)
    assert status == 201, body
    return body


async def test_create_get_list_and_versions(control: Control, name: str) -> None:
    created = await create(control, spec_doc(name, description="first"))
    assert created["version"] == 1
    assert created["created"] is True

    status, body = await control.call("GET", f"/v1/experiments/{name}")
    assert status == 200
    assert body["spec"]["arms"][1]["name"] == "b"
    assert body["status"] == "running"
    assert body["version"] == 1

    status, listing = await control.call("GET", "/v1/experiments")
    assert status == 200
    row = next(e for e in listing["experiments"] if e["name"] == name)
    assert row["arms"] == ["a", "b"]
    assert row["mode"] == "bandit"
    assert row["description"] == "first"

    status, body = await control.call("POST", "/v1/experiments", spec_doc(name))
    assert status == 409


async def test_put_creates_then_replaces_and_reports_unchanged(control: Control, name: str) -> None:
    status, body = await control.call("PUT", f"/v1/experiments/{name}", spec_doc(name))
    assert status == 201
    assert body["version"] == 1
    status, body = await control.call("PUT", f"/v1/experiments/{name}", spec_doc(name))
    assert status == 200
    assert body.get("unchanged") is True
    assert body["version"] == 1
    status, body = await control.call(
        "PUT", f"/v1/experiments/{name}", spec_doc(name, description="second")
    )
    assert status == 200
    assert body["version"] == 2
    assert body["changes"] == [{"path": "description", "op": "replace", "old": "", "new": "second"}]


async def test_put_accepts_yaml(control: Control, name: str) -> None:
    text = f"name: {name}\nmode: ab\narms:\n  - {{name: x, url: 'http://127.0.0.1:9'}}\n"
    status, body = await control.call(
        "PUT",
        f"/v1/experiments/{name}",
        raw=text.encode(),
        headers={"content-type": "application/yaml"},
    )
    assert status == 201, body
    assert body["spec"]["mode"] == "ab"


async def test_patch_is_a_json_merge_patch(control: Control, name: str) -> None:
    before = await create(control, spec_doc(name, policy={"min_arm_share": 0.05}, description="d"))
    status, body = await control.call(
        "PATCH",
        f"/v1/experiments/{name}",
        {"policy": {"min_arm_share": 0.2}, "description": None},
        headers={"content-type": "application/merge-patch+json"},
    )
    assert status == 200, body
    assert body["version"] == 2
    assert body["spec"]["policy"]["min_arm_share"] == 0.2
    assert body["spec"]["description"] == ""  # null removed it: back to the default
    # untouched siblings stay
    assert body["spec"]["policy"]["exploration"] == before["spec"]["policy"]["exploration"]
    paths = {change["path"] for change in body["changes"]}
    assert paths == {"policy.min_arm_share", "description"}

    status, versions = await control.call("GET", f"/v1/experiments/{name}/versions")
    assert status == 200
    assert [v["version"] for v in versions["versions"]] == [1, 2]
    assert versions["versions"][0]["changes"] == [{"path": "(root)", "op": "create"}]
    assert versions["versions"][1]["reason"] == "api: patch"
    assert versions["versions"][1]["ts_ms"] >= versions["versions"][0]["ts_ms"]

    status, body = await control.call("POST", f"/v1/experiments/{name}/versions/1/restore")
    assert status == 200
    assert body["version"] == 3
    assert body["spec"]["policy"]["min_arm_share"] == 0.05
    assert body["spec"]["description"] == "d"


async def test_if_match_rejects_a_stale_write(control: Control, name: str) -> None:
    await create(control, spec_doc(name))
    await control.call("PATCH", f"/v1/experiments/{name}", {"description": "x"})
    status, body = await control.call(
        "PATCH", f"/v1/experiments/{name}", {"description": "y"}, headers={"if-match": '"1"'}
    )
    assert status == 412
    assert "version 2" in body["error"]["message"]
    status, _ = await control.call(
        "PATCH", f"/v1/experiments/{name}", {"description": "y"}, headers={"if-match": '"2"'}
    )
    assert status == 200


INVALID = [
    (
        "POST",
        "/v1/experiments",
        lambda n: spec_doc(n, arms=("a",)) | {"arms": [{"name": "a", "url": "ftp://x"}]},
        "arms[0].url",
    ),
    ("PUT", "/v1/experiments/{name}", lambda n: spec_doc(n, mode="sideways"), "mode"),
    (
        "PATCH",
        "/v1/experiments/{name}",
        lambda n: {"policy": {"min_arm_share": 0.9}},
        "policy.min_arm_share",
    ),
    ("PATCH", "/v1/experiments/{name}", lambda n: {"reward": {"min": 2, "max": 1}}, "reward"),
    ("POST", "/v1/experiments/{name}/arms", lambda n: {"name": "c", "url": "nope"}, "arms[2].url"),
    (
        "POST",
        "/v1/experiments/{name}/arms",
        lambda n: {"name": "c", "url": "http://x", "extra": 1},
        "arms[2].extra",
    ),
    ("POST", "/v1/experiments/{name}/pause", lambda n: {"weights": {"zzz": 1}}, "weights.zzz"),
    ("POST", "/v1/experiments/{name}/pause", lambda n: {"weights": {"a": -1}}, "weights.a"),
    ("POST", "/v1/experiments/{name}/end", lambda n: {"winner": "zzz"}, "winner"),
    ("PUT", "/v1/experiments/{name}", lambda n: spec_doc("other-name"), "name"),
]


@pytest.mark.parametrize(("method", "path", "make", "field"), INVALID, ids=[i[3] for i in INVALID])
async def test_invalid_input_is_422_with_the_field_path(
    control: Control, name: str, redis: Redis, method: str, path: str, make: Any, field: str
) -> None:
    await create(control, spec_doc(name))
    before = await control.call("GET", f"/v1/experiments/{name}")
    status, body = await control.call(method, path.format(name=name), make(name))
    assert status == 422, body
    assert body["error"]["field"] == field
    assert field.split("[")[0].split(".")[0] in body["error"]["message"]
    after = await control.call("GET", f"/v1/experiments/{name}")
    assert after == before  # nothing half-written


async def test_malformed_json_is_422(control: Control, name: str) -> None:
    status, body = await control.call("POST", "/v1/experiments", raw=b"{not json")
    assert status == 422
    assert body["error"]["field"] == "body"


UNKNOWN = [
    ("GET", "/v1/experiments/{name}", None),
    ("PATCH", "/v1/experiments/{name}", {"description": "x"}),
    ("DELETE", "/v1/experiments/{name}", None),
    ("POST", "/v1/experiments/{name}/arms", {"name": "c", "url": "http://x"}),
    ("DELETE", "/v1/experiments/{name}/arms/a", None),
    ("POST", "/v1/experiments/{name}/pause", None),
    ("POST", "/v1/experiments/{name}/resume", None),
    ("POST", "/v1/experiments/{name}/end", {"winner": "a"}),
    ("GET", "/v1/experiments/{name}/versions", None),
    ("GET", "/v1/experiments/{name}/versions/1", None),
    ("POST", "/v1/experiments/{name}/versions/1/restore", None),
    ("GET", "/v1/experiments/{name}/policies", None),
    ("POST", "/v1/experiments/{name}/policies/1/activate", None),
    ("GET", "/v1/experiments/{name}/stats", None),
    ("GET", "/v1/experiments/{name}/timeseries", None),
]


@pytest.mark.parametrize(
    ("method", "path", "body"), UNKNOWN, ids=[f"{m} {p}" for m, p, _ in UNKNOWN]
)
async def test_unknown_experiment_is_404(
    control: Control, name: str, method: str, path: str, body: Any
) -> None:
    status, response = await control.call(method, path.format(name=name), body)
    assert status == 404, response
    assert response["error"]["type"] == "UnknownExperiment"
    assert name in response["error"]["message"]


@pytest.mark.parametrize(
    ("method", "path"), STATE_CHANGING, ids=[f"{m} {p}" for m, p in STATE_CHANGING]
)
async def test_admin_key_guards_every_change(
    control: Control, name: str, method: str, path: str
) -> None:
    await create(control, spec_doc(name))
    status, body = await control.call(method, path.format(name=name), spec_doc(name), key=None)
    assert status == 401
    assert body["error"]["type"] == "Unauthorized"
    status, body = await control.call(method, path.format(name=name), spec_doc(name), key="wrong")
    assert status == 403
    assert body["error"]["type"] == "Forbidden"
    status, _ = await control.call("GET", f"/v1/experiments/{name}")
    assert status == 200  # still there, unchanged by the refused calls
    status, versions = await control.call("GET", f"/v1/experiments/{name}/versions")
    assert len(versions["versions"]) == 1


async def test_removing_arms(control: Control, name: str) -> None:
    await create(control, spec_doc(name, arms=("a", "b")))
    status, body = await control.call("DELETE", f"/v1/experiments/{name}/arms/zzz")
    assert status == 404
    status, body = await control.call("DELETE", f"/v1/experiments/{name}/arms/a")
    assert status == 200
    assert [a["name"] for a in body["spec"]["arms"]] == ["b"]
    assert body["changes"][0]["path"] == "arms[a]"
    assert body["changes"][0]["op"] == "remove"
    status, body = await control.call("DELETE", f"/v1/experiments/{name}/arms/b")
    assert status == 409
    assert "last arm" in body["error"]["message"]


async def test_an_arm_the_spec_names_cannot_be_removed(control: Control, name: str) -> None:
    doc = spec_doc(name, mode="canary", canary={"baseline": "a", "canary": "b"})
    await create(
        control, doc | {"arms": [*doc["arms"], {"name": "c", "url": "http://127.0.0.1:9"}]}
    )
    status, body = await control.call("DELETE", f"/v1/experiments/{name}/arms/b")
    assert status == 409
    assert body["error"]["field"] == "canary.canary"
    status, _ = await control.call("DELETE", f"/v1/experiments/{name}/arms/c")
    assert status == 200


def _weights(body: dict[str, Any]) -> dict[str, float]:
    return {a["name"]: a.get("weight") for a in body["spec"]["arms"]}


async def test_ab_weights_renormalise_when_arms_come_and_go(control: Control, name: str) -> None:
    doc = spec_doc(name, arms=("a", "b", "c"), mode="ab")
    for arm, weight in zip(doc["arms"], (50, 30, 20), strict=True):
        arm["weight"] = weight
    await create(control, doc)

    status, body = await control.call("DELETE", f"/v1/experiments/{name}/arms/c")
    assert status == 200
    assert _weights(body) == pytest.approx({"a": 62.5, "b": 37.5})

    status, body = await control.call(
        "POST",
        f"/v1/experiments/{name}/arms",
        {"name": "d", "url": "http://127.0.0.1:9", "weight": 20},
    )
    assert status == 201, body
    assert _weights(body) == pytest.approx({"a": 50.0, "b": 30.0, "d": 20.0})

    status, body = await control.call(
        "POST", f"/v1/experiments/{name}/arms", {"name": "e", "url": "http://127.0.0.1:9"}
    )
    # No weight: an equal share (1/4); the others shrink by 3/4.
    assert _weights(body) == pytest.approx({"a": 37.5, "b": 22.5, "d": 15.0, "e": 25.0})

    status, body = await control.call(
        "POST",
        f"/v1/experiments/{name}/arms",
        {"name": "f", "url": "http://127.0.0.1:9", "weight": 100},
    )
    assert status == 422
    assert body["error"]["field"] == "weight"
    status, body = await control.call(
        "POST", f"/v1/experiments/{name}/arms", {"name": "a", "url": "http://127.0.0.1:9"}
    )
    assert status == 409


async def test_ab_equal_split_with_policy_weights(control: Control, name: str) -> None:
    await create(
        control, spec_doc(name, arms=("a", "b"), mode="ab", policy={"weights": {"a": 3, "b": 1}})
    )
    status, body = await control.call(
        "POST", f"/v1/experiments/{name}/arms", {"name": "c", "url": "http://x"}
    )
    assert status == 201
    assert body["spec"]["policy"]["weights"] == pytest.approx({"a": 2.0, "b": 2 / 3, "c": 4 / 3})
    status, body = await control.call("DELETE", f"/v1/experiments/{name}/arms/a")
    assert body["spec"]["policy"]["weights"] == pytest.approx({"b": 4 / 3, "c": 8 / 3})
    status, body = await control.call(
        "POST", f"/v1/experiments/{name}/arms", {"name": "d", "url": "http://x", "weight": "heavy"}
    )
    assert status == 422
    assert body["error"]["field"] == "arms[2].weight"


async def test_pause_resume_and_end(control: Control, name: str) -> None:
    await create(
        control, spec_doc(name, arms=("a", "b"), mode="ab", policy={"weights": {"a": 3, "b": 1}})
    )
    status, body = await control.call("POST", f"/v1/experiments/{name}/resume")
    assert status == 409

    status, body = await control.call("POST", f"/v1/experiments/{name}/pause")
    assert status == 200
    assert body["override"]["weights"] == {"a": 0.75, "b": 0.25}  # the configured split, frozen
    assert body["override"]["paused"] is True
    status, body = await control.call("GET", f"/v1/experiments/{name}")
    assert body["status"] == "paused"

    status, body = await control.call(
        "POST", f"/v1/experiments/{name}/pause", {"weights": {"b": 1}}
    )
    assert body["override"]["weights"] == {"a": 0.0, "b": 1.0}

    status, body = await control.call("POST", f"/v1/experiments/{name}/end", {"winner": "a"})
    assert status == 200
    assert body["override"]["weights"] == {"a": 1.0, "b": 0.0}
    status, body = await control.call("GET", f"/v1/experiments/{name}")
    assert body["status"] == "ended"
    assert body["winner"] == "a"

    status, body = await control.call("DELETE", f"/v1/experiments/{name}/arms/a")
    assert status == 409  # the winner carries all traffic
    assert body["error"]["field"] == "weights"

    status, body = await control.call("POST", f"/v1/experiments/{name}/resume")
    assert status == 200
    assert body["override"] is None
    status, body = await control.call("GET", f"/v1/experiments/{name}")
    assert body["status"] == "running"
    assert body["override"] is None


async def test_resume_restores_weights_set_before_the_pause(
    control: Control, name: str, redis: Redis
) -> None:
    from banditgate.store import ExperimentStore

    await create(control, spec_doc(name, mode="canary", canary={"baseline": "a", "canary": "b"}))
    store = ExperimentStore(redis)
    await store.set_override(name, {"a": 0.9, "b": 0.1}, reason="canary step 10%", step=1)
    status, body = await control.call("POST", f"/v1/experiments/{name}/pause")
    assert body["override"]["weights"] == {"a": 0.9, "b": 0.1}
    status, body = await control.call("POST", f"/v1/experiments/{name}/resume")
    assert status == 200
    restored = await store.get_override(name)
    assert restored is not None
    assert restored["weights"] == {"a": 0.9, "b": 0.1}
    assert restored["reason"] == "canary step 10%"
    assert restored["step"] == 1
    assert not restored.get("paused")


async def test_policy_versions_and_rollback(control: Control, name: str, redis: Redis) -> None:
    await create(control, spec_doc(name, policy={"learner": "thompson"}))
    registry = PolicyRegistry(redis)
    for successes in (1.0, 5.0):
        counts = BetaCounts({"a": successes, "b": 1.0}, {"a": 1.0, "b": 1.0})
        await registry.publish(name, counts.to_bytes(), learner="thompson", source="trainer")

    status, body = await control.call("GET", f"/v1/experiments/{name}/policies")
    assert status == 200
    assert body["current"] == 2
    assert [v["version"] for v in body["versions"]] == [1, 2]

    status, body = await control.call("POST", f"/v1/experiments/{name}/policies/1/activate")
    assert status == 200, body
    assert body["current"] == 1
    assert await registry.current_version(name) == 1
    status, body = await control.call("GET", f"/v1/experiments/{name}/policies")
    assert body["history"][0]["version"] == 1
    assert body["history"][0]["reason"] == "api: activate 1"

    status, body = await control.call("POST", f"/v1/experiments/{name}/policies/9/activate")
    assert status == 404
    assert body["error"]["type"] == "UnknownPolicyVersion"
    status, body = await control.call("POST", f"/v1/experiments/{name}/policies/x/activate")
    assert status == 422
    assert body["error"]["field"] == "path.version"


async def test_delete(control: Control, name: str) -> None:
    await create(control, spec_doc(name))
    status, _ = await control.call("DELETE", f"/v1/experiments/{name}")
    assert status == 204
    status, _ = await control.call("GET", f"/v1/experiments/{name}")
    assert status == 404


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        for value in node.values():
            found |= _refs(value)
        return found
    if isinstance(node, list):
        return set().union(*(_refs(value) for value in node)) if node else set()
    return set()


async def test_openapi_carries_the_spec_schema_and_bad_specs_keep_their_messages(
    control: Control, name: str
) -> None:
    doc = await control.get("/openapi.json")
    paths = doc["paths"]
    spec_ref = {"$ref": "#/components/schemas/ExperimentSpec"}
    for path, method in (("/v1/experiments", "post"), ("/v1/experiments/{name}", "put")):
        content = paths[path][method]["requestBody"]["content"]
        assert content["application/json"]["schema"] == spec_ref
    arm_body = paths["/v1/experiments/{name}/arms"]["post"]["requestBody"]["content"]
    assert arm_body["application/json"]["schema"] == {"$ref": "#/components/schemas/Arm"}
    schemas = doc["components"]["schemas"]
    spec = schemas["ExperimentSpec"]
    assert spec["required"] == ["name", "arms"]
    assert spec["properties"]["name"]["pattern"] == "^[a-z0-9][a-z0-9-]{0,62}$"
    assert spec["properties"]["arms"]["items"] == {"$ref": "#/components/schemas/Arm"}
    arm = schemas["Arm"]["properties"]
    assert arm["timeout_s"]["description"].startswith("Backend response timeout")
    assert schemas["RewardSpec"]["properties"]["backward_window_s"]["default"] == 120.0
    assert "lambda" in schemas["Exploration"]["properties"]
    # Every reference in the document resolves.
    for ref in _refs(doc):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    # The body is still parsed by the route: a bad spec names the field and the reason.
    bad = spec_doc(name, arms=("a",))
    bad["arms"][0]["timeout_s"] = 0
    status, body = await control.call("POST", "/v1/experiments", bad)
    assert status == 422
    assert body["error"]["field"] == "arms[0].timeout_s"
    assert body["error"]["message"] == (
        "invalid experiment spec: arms[0].timeout_s: Input should be greater than 0"
    )
