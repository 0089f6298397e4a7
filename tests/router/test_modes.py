"""Static A/B (weights, sticky keys, targeting rules), blue/green and canary allocation,
and run-time mode switches: every decision logged with its pmf."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from banditgate.policy import ActionSet, StaticPolicy, sample_index
from banditgate.spec import parse_spec
from banditgate.store import ExperimentStore, override_applies
from router.allocation import allocate, sticky_seed
from router.runtime import build_state
from tests.support import Backend, make_spec, run_backend, wait_for
from tests.traffic import decision_count, decisions, invoke_many


def _ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i:05d}" for i in range(n)]


async def test_ab_weights_are_the_logged_pmf_and_replay_from_the_event_id(
    start_router, redis, name
):
    async with run_backend(Backend(label=1)) as a, run_backend(Backend(label=2)) as b:
        spec = make_spec(
            name, [("a", a.url), ("b", b.url)], mode="ab", policy={"weights": {"a": 3, "b": 1}}
        )
        url, _ = await start_router(spec)
        ids = _ids("ab", 400)
        replies = await invoke_many(url, name, ids)
        await wait_for(lambda: _at_least(redis, name, 400))

    assert {r.status for r in replies} == {200}
    logged = {d["event_id"]: d for d in await decisions(redis, name)}
    assert len(logged) == 400
    for reply, event_id in zip(replies, ids, strict=True):
        decision = logged[event_id]
        assert decision["mode"] == "ab"
        assert decision["pmf"] == [0.75, 0.25]
        assert decision["forced"] is False
        assert decision["chosen"] == reply.variant
        assert decision["chosen"] == ["a", "b"][sample_index([0.75, 0.25], event_id, 0)]
    shares = Counter(d["chosen"] for d in logged.values())
    assert 250 <= shares["a"] <= 350
    assert len(a.requests) == shares["a"] and len(b.requests) == shares["b"]


async def test_sticky_header_keeps_each_key_on_one_arm_across_1000_requests(
    start_router, redis, name
):
    async with run_backend() as a, run_backend() as b:
        spec = make_spec(
            name, [("a", a.url), ("b", b.url)], mode="ab", ab={"sticky": {"header": "X-User"}}
        )
        url, _ = await start_router(spec)
        seen: dict[str, set[str | None]] = {}
        for user in ("alice", "bob", "carol"):
            replies = await invoke_many(
                url, name, _ids(user, 1000), headers={"x-user": user}, concurrency=48
            )
            assert {r.status for r in replies} == {200}
            seen[user] = {r.variant for r in replies}
        await wait_for(lambda: _at_least(redis, name, 3000))

    for user, variants in seen.items():
        assert variants == {_sticky_arm(name, user)}
    for decision in await decisions(redis, name):
        assert decision["pmf"] == [0.5, 0.5]  # the population-level propensity
        assert decision["forced"] is False


async def test_sticky_cookie_and_body_field(start_router, name):
    async with run_backend() as a, run_backend() as b:
        cookie = make_spec(
            name, [("a", a.url), ("b", b.url)], mode="ab", ab={"sticky": {"cookie": "uid"}}
        )
        body_name = f"{name}-body"
        by_body = make_spec(
            body_name,
            [("a", a.url), ("b", b.url)],
            mode="ab",
            context={},
            ab={"sticky": {"body": "user.id"}},
        )
        url, _ = await start_router(cookie, by_body)
        variants: dict[str, set[str | None]] = defaultdict(set)
        for uid in ("u1", "u2", "u3", "u4", "u5", "u6"):
            headers = {"cookie": f"theme=dark; uid={uid}; lang=en"}
            for reply in await invoke_many(url, name, _ids(uid, 60), headers=headers):
                variants[f"cookie:{uid}"].add(reply.variant)
            body = {"user": {"id": uid}, "features": ["x"]}
            for reply in await invoke_many(url, body_name, _ids(f"b{uid}", 60), body=body):
                variants[f"body:{uid}"].add(reply.variant)
    for uid in ("u1", "u2", "u3", "u4", "u5", "u6"):
        assert variants[f"cookie:{uid}"] == {_sticky_arm(name, uid)}
        assert variants[f"body:{uid}"] == {_sticky_arm(body_name, uid)}


def test_sticky_keys_move_only_out_of_a_shrinking_band_when_weights_shift():
    spec = parse_spec(
        {
            "name": "sticky",
            "mode": "ab",
            "arms": [{"name": "a", "url": "http://a"}, {"name": "b", "url": "http://b"}],
            "ab": {"sticky": {"header": "x-user"}},
        }
    )
    actions = ActionSet.from_spec(spec)

    def assignment(weights: dict[str, float] | None) -> dict[str, str]:
        override = None if weights is None else {"weights": weights, "revision": 7, "mode": "ab"}
        state = build_state(spec, StaticPolicy({}), 0, override)
        out = {}
        for i in range(2000):
            allocation = allocate(state, {}, actions, {"x-user": f"user{i}"}, None)
            assert allocation.seed_key is not None
            out[f"user{i}"] = actions.names[sample_index(allocation.pmf, allocation.seed_key, 0)]
        return out

    before, after = assignment(None), assignment({"a": 60, "b": 40})
    moved = [user for user in before if before[user] != after[user]]
    assert all(before[user] == "b" and after[user] == "a" for user in moved)
    assert 120 <= len(moved) <= 280  # about the 10 % of keys in the band that changed hands


async def test_targeting_rules_send_matching_requests_to_their_arm_with_p_one(
    start_router, redis, name
):
    async with run_backend() as a, run_backend() as b, run_backend() as c:
        spec = parse_spec(
            {
                "name": name,
                "mode": "ab",
                "arms": [
                    {"name": "a", "url": a.url, "protocol": "sagemaker", "weight": 1},
                    {"name": "b", "url": b.url, "protocol": "sagemaker", "weight": 0},
                    {"name": "c", "url": c.url, "protocol": "sagemaker", "weight": 0},
                ],
                "ab": {
                    "rules": [
                        {"header": "X-Beta", "equals": 1, "arm": "b"},
                        {"body": "user.tier", "in": ["gold", "platinum"], "arm": "c"},
                        {"body": "user.staff", "equals": True, "arm": "b"},
                    ]
                },
            }
        )
        url, _ = await start_router(spec)
        beta = await invoke_many(url, name, _ids("beta", 20), headers={"x-beta": "1"})
        gold = await invoke_many(url, name, _ids("gold", 20), body={"user": {"tier": "gold"}})
        staff = await invoke_many(url, name, _ids("staff", 20), body={"user": {"staff": True}})
        plain = await invoke_many(
            url, name, _ids("plain", 20), headers={"x-beta": "0"}, body={"user": {"tier": "tin"}}
        )
        await wait_for(lambda: _at_least(redis, name, 80))

    assert {r.variant for r in beta} == {"b"}
    assert {r.variant for r in gold} == {"c"}
    assert {r.variant for r in staff} == {"b"}
    assert {r.variant for r in plain} == {"a"}
    pmf_by_arm = {(d["chosen"], tuple(d["pmf"])) for d in await decisions(redis, name)}
    assert pmf_by_arm == {("a", (1.0, 0.0, 0.0)), ("b", (0.0, 1.0, 0.0)), ("c", (0.0, 0.0, 1.0))}


async def test_bluegreen_preview_is_reachable_only_through_the_target_variant(
    start_router, redis, name
):
    async with run_backend() as blue, run_backend() as green:
        spec = make_spec(
            name,
            [("blue", blue.url), ("green", green.url)],
            mode="bluegreen",
            bluegreen={"active": "blue", "preview": "green"},
        )
        url, _ = await start_router(spec)
        plain = await invoke_many(url, name, _ids("plain", 200))
        pinned = await invoke_many(
            url, name, _ids("pin", 10), headers={"X-Amzn-SageMaker-Target-Variant": "green"}
        )
        await wait_for(lambda: _at_least(redis, name, 210))

    assert {r.variant for r in plain} == {"blue"}
    assert {r.variant for r in pinned} == {"green"}
    assert len(green.requests) == 10
    for decision in await decisions(redis, name):
        assert decision["mode"] == "bluegreen"
        if decision["chosen"] == "green":
            assert decision["forced"] is True and decision["pmf"] == [0.0, 1.0]
        else:
            assert decision["forced"] is False and decision["pmf"] == [1.0, 0.0]


async def test_canary_follows_the_controller_override_for_its_own_target_only(
    start_router, redis, name
):
    async with run_backend() as base, run_backend() as new:
        spec = make_spec(
            name,
            [("base", base.url), ("new", new.url)],
            mode="canary",
            canary={"baseline": "base", "canary": "new"},
        )
        url, app = await start_router(spec)
        store = ExperimentStore(redis)
        await store.set_override(
            name, {"base": 80, "new": 20}, reason="step", mode="canary", target=["base", "new"]
        )
        await wait_for(lambda: _override_revision(app, name, 1))
        stepped = await invoke_many(url, name, _ids("step", 300))
        # The same weights for another target lapse: the baseline gets everything.
        await store.set_override(
            name, {"base": 0, "new": 100}, reason="stale", mode="canary", target=["x", "new"]
        )
        await wait_for(lambda: _no_override(app, name))
        stale = await invoke_many(url, name, _ids("stale", 50))
        await wait_for(lambda: _at_least(redis, name, 350))

    shares = Counter(r.variant for r in stepped)
    assert 30 <= shares["new"] <= 90 and shares["base"] + shares["new"] == 300
    assert {r.variant for r in stale} == {"base"}
    logged = {d["event_id"]: d for d in await decisions(redis, name)}
    assert {tuple(logged[e]["pmf"]) for e in _ids("step", 300)} == {(0.8, 0.2)}
    assert {logged[e]["policy_version"] for e in _ids("step", 300)} == {1}
    assert {tuple(logged[e]["pmf"]) for e in _ids("stale", 50)} == {(1.0, 0.0)}


async def test_modes_switch_at_run_time_without_restarting_the_router(start_router, redis, name):
    async with run_backend() as a, run_backend() as b:
        arms = [("a", a.url), ("b", b.url)]
        store = ExperimentStore(redis)
        url, app = await start_router(
            make_spec(name, arms, mode="ab", policy={"weights": {"a": 1, "b": 0}})
        )
        first = await invoke_many(url, name, _ids("ab", 20))

        await store.put(
            make_spec(name, arms, mode="canary", canary={"baseline": "b", "canary": "a"})
        )
        await wait_for(lambda: _mode(app, name, "canary"))
        second = await invoke_many(url, name, _ids("canary", 20))
        await store.set_override(
            name, {"a": 50, "b": 50}, reason="step", mode="canary", target=["b", "a"]
        )
        await wait_for(lambda: _override_revision(app, name, 1))

        shadow = {"primary": "b", "shadows": ["a"], "percent": 0}
        await store.put(make_spec(name, arms, mode="shadow", shadow=shadow))
        await wait_for(lambda: _mode(app, name, "shadow"))
        third = await invoke_many(url, name, _ids("shadow", 20))

        await store.put(make_spec(name, arms, mode="bandit"))
        await wait_for(lambda: _mode(app, name, "bandit"))
        fourth = await invoke_many(url, name, _ids("bandit", 20))
        await wait_for(lambda: _at_least(redis, name, 80))

    assert {r.variant for r in first} == {"a"}
    assert {r.variant for r in second} == {"b"}
    assert {r.variant for r in third} == {"b"}  # the canary override lapsed with its mode
    logged = {d["event_id"]: d for d in await decisions(redis, name)}
    assert {logged[e]["mode"] for e in _ids("bandit", 20)} == {"bandit"}
    for reply, event_id in zip(fourth, _ids("bandit", 20), strict=True):
        decision = logged[event_id]
        assert decision["chosen"] == reply.variant
        assert abs(sum(decision["pmf"]) - 1) < 1e-6 and min(decision["pmf"]) > 0


@pytest.mark.parametrize(
    ("override", "applies"),
    [
        ({"weights": {"a": 1}}, True),
        ({"weights": {"a": 1}, "mode": "canary", "target": ["a", "b"]}, True),
        ({"weights": {"a": 1}, "mode": "ab"}, False),
        ({"weights": {"a": 1}, "mode": "canary", "target": ["b", "a"]}, False),
        ({"weights": {"gone": 1}}, False),
        (None, False),
    ],
)
def test_an_override_applies_only_to_the_mode_and_target_it_was_made_for(override, applies):
    spec = parse_spec(
        {
            "name": "scoped",
            "mode": "canary",
            "arms": [{"name": "a", "url": "http://a"}, {"name": "b", "url": "http://b"}],
            "canary": {"baseline": "a", "canary": "b"},
        }
    )
    assert override_applies(spec, override) is applies


def _sticky_arm(experiment: str, value: str) -> str:
    return ["a", "b"][sample_index([0.5, 0.5], sticky_seed(experiment, value), 0)]


async def _at_least(redis, name, n):  # type: ignore[no-untyped-def]
    return await decision_count(redis, name) >= n


async def _mode(app, name, mode):  # type: ignore[no-untyped-def]
    state = app.runtime.experiments.get(name)
    return state is not None and state.spec.mode == mode


async def _override_revision(app, name, revision):  # type: ignore[no-untyped-def]
    state = app.runtime.experiments.get(name)
    return state is not None and (state.override or {}).get("revision") == revision


async def _no_override(app, name):  # type: ignore[no-untyped-def]
    state = app.runtime.experiments.get(name)
    return state is not None and state.override is None and state.static is None
