"""The weights and rollout endpoints over real HTTP, and the 422s for bad rollout input."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from banditgate.errors import InvalidSpec
from banditgate.spec import parse_spec
from banditgate.store import ExperimentStore
from experiments.app import create_control_app
from experiments.settings import ControlSettings
from tests.router.conftest import start_router  # noqa: F401  (fixture)
from tests.support import make_spec, run_backend, serve_asgi, wait_for
from tests.traffic import invoke_many

ADMIN = {"authorization": "Bearer rollout-admin"}


class Api:
    def __init__(self, session: aiohttp.ClientSession, base: str, name: str) -> None:
        self.session, self.base, self.name = session, base, name

    async def call(
        self, method: str, path: str, body: Any = None, *, admin: bool = True
    ) -> tuple[int, Any]:
        url = f"{self.base}/v1/experiments/{self.name}{path}"
        headers = ADMIN if admin else {}
        async with self.session.request(method, url, json=body, headers=headers) as response:
            return response.status, await response.json()


@pytest.fixture
async def control(redis, redis_url) -> AsyncIterator[str]:  # type: ignore[no-untyped-def]
    settings = ControlSettings(redis_url=redis_url, admin_keys=["rollout-admin"])
    async with serve_asgi(create_control_app(settings, redis=redis)) as base:
        yield base


@pytest.fixture
async def api(control, name) -> AsyncIterator[Api]:  # type: ignore[no-untyped-def]
    async with aiohttp.ClientSession() as session:
        yield Api(session, control, name)


def canary(name: str, **section: Any):  # type: ignore[no-untyped-def]
    return make_spec(
        name,
        [("base", "http://127.0.0.1:9"), ("new", "http://127.0.0.1:9")],
        mode="canary",
        canary={"baseline": "base", "canary": "new", "steps": [10, 100], **section},
    )


async def test_weights_api_moves_ab_traffic_without_restarting_the_router(
    start_router,  # noqa: F811
    redis,
    name,
    api,
):
    async with run_backend() as a, run_backend() as b:
        spec = make_spec(name, [("a", a.url), ("b", b.url)], mode="ab")
        url, app = await start_router(spec)
        status, view = await api.call("GET", "/rollout")
        assert status == 200
        assert (view["phase"], view["weights"]) == ("Static", {"a": 50.0, "b": 50.0})

        status, view = await api.call(
            "PUT", "/weights", [{"variant": "a", "weight": 0}, {"variant": "b", "weight": 95}]
        )
        assert status == 200
        assert (view["phase"], view["weights"]) == ("Static", {"a": 0.0, "b": 100.0})
        assert view["history"][-1]["reason"] == "weights set by hand"

        async def moved() -> bool:
            state = app.runtime.experiments[name]
            return state.static is not None and state.static.weights == {"a": 0.0, "b": 100.0}

        await wait_for(moved)
        replies = await invoke_many(url, name, [f"w-{i}" for i in range(30)])
        assert {r.variant for r in replies} == {"b"}

        # SageMaker's own field names are understood too.
        status, view = await api.call(
            "PUT",
            "/weights",
            [{"VariantName": "a", "DesiredWeight": 1}, {"VariantName": "b", "DesiredWeight": 3}],
        )
        assert (status, view["weights"]) == (200, {"a": 25.0, "b": 75.0})

        status, view = await api.call("DELETE", "/weights")
        assert (status, view["weights"]) == (200, {"a": 50.0, "b": 50.0})
        assert await ExperimentStore(redis).get_override(name) is None


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ([{"variant": "a", "weight": 0}, {"variant": "b", "weight": 0}], "weight", "positive"),
        ([{"variant": "a", "weight": 1}, {"variant": "nope", "weight": 1}], "1.variant", "unknown"),
        ([{"variant": "a", "weight": -1}], "0.weight", "greater than or equal to 0"),
        ([{"variant": "a", "weight": 1}, {"variant": "a", "weight": 2}], "1.variant", "twice"),
        (
            [{"variant": "a", "weight": 1, "DesiredInstanceCount": -1}],
            "0.DesiredInstanceCount",
            "greater than",
        ),
        ([], "body", ""),
        ("a", "body", "list"),
        ({"a": 1}, "DesiredWeightsAndCapacities", "required"),
        (
            {"EndpointName": "other", "DesiredWeightsAndCapacities": [{"VariantName": "a"}]},
            "EndpointName",
            "not this experiment",
        ),
    ],
)
async def test_bad_weights_are_422_naming_the_field(redis, name, api, body, field, words):
    await ExperimentStore(redis).put(
        make_spec(name, [("a", "http://127.0.0.1:9"), ("b", "http://127.0.0.1:9")], mode="ab")
    )
    status, error = await api.call("PUT", "/weights", body)
    assert status == 422
    assert error["error"]["field"] == field
    assert words in error["error"]["message"]
    assert await ExperimentStore(redis).get_override(name) is None  # nothing half-written


async def test_unknown_experiment_is_404_and_writes_need_the_admin_key(api):
    status, error = await api.call("GET", "/rollout")
    assert status == 404 and error["error"]["type"] == "UnknownExperiment"
    status, _ = await api.call("POST", "/rollout/pause", admin=False)
    assert status == 401
    status, _ = await api.call("PUT", "/weights", [{"variant": "a", "weight": 1}], admin=False)
    assert status == 401


async def test_manual_pause_resume_promote_and_abort(redis, name, api):
    await ExperimentStore(redis).put(canary(name))
    status, view = await api.call("GET", "/rollout")
    assert (status, view["phase"], view["weights"]) == (200, "Pending", {"base": 100.0, "new": 0.0})

    status, view = await api.call("POST", "/rollout/pause", {"reason": "holiday freeze"})
    assert (status, view["phase"], view["paused_by"]) == (200, "Paused", "manual")
    assert view["weights"] == {"base": 90.0, "new": 10.0}  # started at step 1, then paused
    assert view["history"][-1]["reason"] == "paused by hand: holiday freeze"
    status, error = await api.call("POST", "/rollout/pause")
    assert status == 409 and error["error"]["type"] == "RolloutConflict"

    status, view = await api.call("POST", "/rollout/resume")
    assert (status, view["phase"], view["step"]) == (200, "Progressing", 1)

    status, view = await api.call("POST", "/rollout/promote")
    assert (view["phase"], view["weights"]) == ("Promoted", {"base": 0.0, "new": 100.0})
    override = await ExperimentStore(redis).get_override(name)
    assert override is not None and override["weights"] == {"base": 0.0, "new": 100.0}
    assert override["mode"] == "canary" and override["target"] == ["base", "new"]
    status, _ = await api.call("POST", "/rollout/abort")
    assert status == 409

    status, view = await api.call("POST", "/rollout/restart")
    assert (view["phase"], view["step"]) == ("Progressing", 1)
    status, view = await api.call("POST", "/rollout/abort", {"reason": "bad metrics"})
    assert (view["phase"], view["weights"]) == ("RolledBack", {"base": 100.0, "new": 0.0})
    assert view["history"][-1]["reason"] == "aborted by hand: bad metrics; all traffic on base"
    phases = [h["phase"] for h in view["history"]]
    assert phases == [
        "Progressing",
        "Paused",
        "Progressing",
        "Promoted",
        "Progressing",
        "RolledBack",
    ]
    override = await ExperimentStore(redis).get_override(name)
    assert override is not None and override["weights"] == {"base": 100.0, "new": 0.0}


async def test_weights_by_hand_pause_a_canary(redis, name, api):
    await ExperimentStore(redis).put(canary(name))
    status, view = await api.call(
        "PUT", "/weights", [{"variant": "base", "weight": 60}, {"variant": "new", "weight": 40}]
    )
    assert (status, view["phase"], view["weights"]) == (200, "Paused", {"base": 60.0, "new": 40.0})
    override = await ExperimentStore(redis).get_override(name)
    assert override is not None and override["weights"] == {"base": 60.0, "new": 40.0}
    status, error = await api.call("DELETE", "/weights")
    assert status == 409 and "resume" in error["error"]["message"]
    status, view = await api.call("POST", "/rollout/resume")
    assert view["weights"] == {"base": 90.0, "new": 10.0}


async def test_bluegreen_switch_and_manual_rollback_through_the_api(
    start_router,  # noqa: F811
    redis,
    name,
    api,
):
    async with run_backend() as blue, run_backend() as green:
        spec = make_spec(
            name,
            [("blue", blue.url), ("green", green.url)],
            mode="bluegreen",
            bluegreen={"active": "blue", "preview": "green", "bake_s": 60},
        )
        url, app = await start_router(spec)
        status, view = await api.call("POST", "/rollout/rollback")
        assert status == 409  # nothing to roll back: blue is still active
        status, view = await api.call("POST", "/rollout/switch")
        assert (status, view["phase"]) == (200, "Progressing")
        assert view["weights"] == {"blue": 0.0, "green": 100.0}
        assert view["switched_ts_ms"] is not None and view["released"] is False

        async def on(arm: str) -> bool:
            state = app.runtime.experiments[name]
            return state.static is not None and state.static.weights.get(arm) == 100.0

        await wait_for(lambda: on("green"))
        switched = await invoke_many(url, name, [f"s-{i}" for i in range(20)])
        status, view = await api.call("POST", "/rollout/rollback", {"reason": "support tickets"})
        assert (status, view["phase"]) == (200, "RolledBack")
        await wait_for(lambda: on("blue"))
        back = await invoke_many(url, name, [f"b-{i}" for i in range(20)])
    assert {r.variant for r in switched} == {"green"}
    assert {r.variant for r in back} == {"blue"}


async def test_rollout_actions_need_a_rollout_mode(redis, name, api):
    await ExperimentStore(redis).put(
        make_spec(name, [("a", "http://127.0.0.1:9"), ("b", "http://127.0.0.1:9")], mode="ab")
    )
    status, error = await api.call("POST", "/rollout/promote")
    assert status == 409 and "mode canary or bluegreen" in error["error"]["message"]
    await ExperimentStore(redis).put(canary(name))
    status, error = await api.call("POST", "/rollout/switch")
    assert status == 409 and "blue/green" in error["error"]["message"]


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ({"steps": [10, 50, 25]}, "canary.steps"),
        ({"steps": [10, 10]}, "canary.steps"),
        ({"steps": [0, 100]}, "canary.steps"),
        ({"baseline": None}, "canary.baseline"),
        ({"canary": "ghost"}, "canary.canary"),
        ({"baseline": "new"}, "canary.canary"),
    ],
)
def test_bad_canary_specs_are_422_naming_the_field(section, field):
    canary = {"baseline": "base", "canary": "new", **section}
    canary = {k: v for k, v in canary.items() if v is not None}
    with pytest.raises(InvalidSpec) as caught:
        parse_spec(
            {
                "name": "bad",
                "mode": "canary",
                "arms": [{"name": "base", "url": "http://b"}, {"name": "new", "url": "http://n"}],
                "canary": canary,
            }
        )
    assert caught.value.status == 422
    assert caught.value.field == field
    assert caught.value.to_dict()["error"]["field"] == field


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"arms": [{"name": "a", "url": "http://a", "weight": 0}]}, "arms"),
        ({"policy": {"weights": {"a": 0}}}, "policy.weights"),
        ({"policy": {"weights": {"ghost": 1}}}, "policy.weights.ghost"),
        (
            {"mode": "bluegreen", "bluegreen": {"active": "a", "preview": "ghost"}},
            "bluegreen.preview",
        ),
        ({"mode": "shadow", "shadow": {"primary": "a", "shadows": ["ghost"]}}, "shadow.shadows[0]"),
        ({"mode": "canary"}, "canary"),
        (
            {"mode": "ab", "ab": {"rules": [{"header": "x", "equals": "1", "arm": "ghost"}]}},
            "ab.rules[0].arm",
        ),
    ],
)
def test_bad_weights_and_arm_names_in_specs_are_422_naming_the_field(doc, field):
    with pytest.raises(InvalidSpec) as caught:
        parse_spec({"name": "bad", "arms": [{"name": "a", "url": "http://a"}], **doc})
    assert caught.value.status == 422
    assert caught.value.field == field


async def test_the_rollout_view_has_the_same_keys_in_every_mode(redis, name, api):
    arms = [("a", "http://127.0.0.1:9"), ("b", "http://127.0.0.1:9")]
    sections = {
        "bandit": {},
        "ab": {},
        "shadow": {"shadow": {"primary": "a", "shadows": ["b"]}},
        "canary": {"canary": {"baseline": "a", "canary": "b"}},
        "bluegreen": {"bluegreen": {"active": "a", "preview": "b"}},
    }
    shapes = {}
    for mode, section in sections.items():
        await ExperimentStore(redis).put(make_spec(name, arms, mode=mode, **section))
        status, view = await api.call("GET", "/rollout")
        assert status == 200 and view["mode"] == mode
        shapes[mode] = sorted(view)
    assert len({tuple(keys) for keys in shapes.values()}) == 1
    assert {"phase", "weights", "history"} <= set(shapes["ab"])
