"""Shadow mode: the primary answers; a share of requests is mirrored off the hot path."""

from __future__ import annotations

import asyncio
import socket

import orjson
from aiohttp import web

from banditgate import keys
from banditgate.events import ShadowResult, decode_shadow_batch
from banditgate.redis import Redis
from router.shadow import mirror_fraction, same_body
from tests.router.test_metrics import metric_values
from tests.support import Backend, make_spec, run_backend, wait_for
from tests.traffic import decision_count, decisions, invoke_many


def _ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i:05d}" for i in range(n)]


def _shadow_spec(name: str, primary: str, shadow: str, **section: object):  # type: ignore[no-untyped-def]
    return make_spec(
        name,
        [("primary", primary), ("shadow", shadow)],
        mode="shadow",
        shadow={"primary": "primary", "shadows": ["shadow"], **section},
    )


async def shadow_results(redis: Redis, experiment: str) -> list[ShadowResult]:
    out: list[ShadowResult] = []
    for _, fields in await redis.xrange(keys.shadow_results(experiment)):
        out.extend(decode_shadow_batch(fields))
    return out


async def test_the_configured_share_is_mirrored_and_rewards_stay_with_the_primary(
    start_router, redis, name
):
    ids = _ids("mirror", 300)
    expected = {e for e in ids if mirror_fraction(e) < 0.3}
    async with run_backend(Backend(label=1)) as primary, run_backend(Backend(label=2)) as shadow:
        url, _ = await start_router(_shadow_spec(name, primary.url, shadow.url, percent=30))
        replies = await invoke_many(url, name, ids)
        await wait_for(lambda: _results_at_least(redis, name, len(expected)))
        await wait_for(lambda: _decisions_at_least(redis, name, 300))

    assert 60 <= len(expected) <= 120
    assert {r.status for r in replies} == {200}
    assert {r.variant for r in replies} == {"primary"}
    assert all(orjson.loads(r.body)["predicted_label"] == 1 for r in replies)
    mirrored = {req["headers"]["x-amzn-sagemaker-inference-id"] for req in shadow.requests}
    assert mirrored == expected
    assert all(req["body"] == b'{"features":["fine"]}' for req in shadow.requests)

    results = await shadow_results(redis, name)
    assert {r["event_id"] for r in results} == expected
    for result in results:
        assert result["primary"]["arm"] == "primary" and result["primary"]["status"] == 200
        assert result["shadow"]["arm"] == "shadow" and result["shadow"]["status"] == 200
        assert result["primary"]["latency_ms"] > 0 and result["shadow"]["latency_ms"] > 0
        assert "same_body" not in result

    # One decision per request, on the primary with p = 1: a reward for the event id
    # joins to the primary's decision; the shadow never has a decision of its own.
    logged = await decisions(redis, name)
    assert sorted(d["event_id"] for d in logged) == ids
    assert {(d["chosen"], tuple(d["pmf"]), d["mode"]) for d in logged} == {
        ("primary", (1.0, 0.0), "shadow")
    }


async def test_the_primary_answers_while_the_shadow_hangs(start_router, redis, name):
    release = asyncio.Event()

    async def hang(request: web.Request, body: bytes) -> web.StreamResponse:
        await release.wait()
        return web.json_response({"predicted_label": 9}, status=200)

    async with run_backend() as primary, run_backend(Backend(reply=hang)) as shadow:
        url, app = await start_router(_shadow_spec(name, primary.url, shadow.url, percent=100))
        replies = await invoke_many(url, name, _ids("hang", 8))
        # Every primary answer is back while all eight mirrors are still held by the shadow.
        assert {r.status for r in replies} == {200}
        await wait_for(lambda: _count_is(shadow.requests, 8))
        assert app.mirror.inflight == 8
        assert await shadow_results(redis, name) == []
        release.set()
        await wait_for(lambda: _results_at_least(redis, name, 8))

    assert {r["shadow"]["status"] for r in await shadow_results(redis, name)} == {200}


async def test_the_primary_answers_when_the_shadow_is_down(start_router, redis, name):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    async with run_backend() as primary:
        url, app = await start_router(_shadow_spec(name, primary.url, dead, percent=100))
        replies = await invoke_many(url, name, _ids("down", 10))
        await wait_for(lambda: _results_at_least(redis, name, 10))

    assert {r.status for r in replies} == {200}
    assert {r.variant for r in replies} == {"primary"}
    results = await shadow_results(redis, name)
    assert {r["shadow"]["status"] for r in results} == {502}
    assert all("error" in r["shadow"] for r in results)
    assert {r["primary"]["status"] for r in results} == {200}
    assert app.mirror.stats.failed == 10


async def test_mirrors_beyond_the_in_flight_bound_are_dropped_not_queued(start_router, redis, name):
    release = asyncio.Event()

    async def hang(request: web.Request, body: bytes) -> web.StreamResponse:
        await release.wait()
        return web.json_response({"predicted_label": 9})

    async with run_backend() as primary, run_backend(Backend(reply=hang)) as shadow:
        spec = _shadow_spec(name, primary.url, shadow.url, percent=100)
        url, app = await start_router(spec, shadow_max_inflight=3)
        replies = await invoke_many(url, name, _ids("bound", 10), concurrency=1)
        assert {r.status for r in replies} == {200}
        await wait_for(lambda: _count_is(shadow.requests, 3))
        assert app.mirror.stats.started == 3 and app.mirror.stats.dropped == 7
        release.set()
        await wait_for(lambda: _results_at_least(redis, name, 3))
    assert len(await shadow_results(redis, name)) == 3
    exported = metric_values(app.process_metrics.render(), "banditgate_router_shadow_dropped")
    assert exported == {(("reason", "in_flight"),): 7.0, (("reason", "buffer"),): 0.0}


async def test_bodies_are_compared_when_asked(start_router, redis, name):
    async def reordered(request: web.Request, body: bytes) -> web.StreamResponse:
        payload = orjson.loads(body)
        label = 3 if payload["features"][0] == "same" else 4
        # Same document as the primary's {"predicted_label": 3, "path": ...}, keys reordered.
        return web.Response(
            body=b'{"path": "/invocations", "predicted_label": %d}' % label,
            content_type="application/json",
        )

    async with (
        run_backend(Backend(label=3)) as primary,
        run_backend(Backend(reply=reordered)) as shadow,
    ):
        spec = _shadow_spec(name, primary.url, shadow.url, percent=100, compare_bodies=True)
        url, _ = await start_router(spec)
        await invoke_many(url, name, _ids("same", 5), body={"features": ["same"]})
        await invoke_many(url, name, _ids("diff", 5), body={"features": ["different"]})
        await wait_for(lambda: _results_at_least(redis, name, 10))

    verdicts = {r["event_id"]: r["same_body"] for r in await shadow_results(redis, name)}
    assert verdicts == {
        **dict.fromkeys(_ids("same", 5), True),
        **dict.fromkeys(_ids("diff", 5), False),
    }


def test_body_comparison_ignores_json_key_order_but_not_values():
    assert same_body(b'{"a": 1, "b": [1, 2]}', b'{"b":[1,2],"a":1}')
    assert not same_body(b'{"a": 1}', b'{"a": 2}')
    assert same_body(b"plain", b"plain")
    assert not same_body(b"plain", b"other")


async def _results_at_least(redis, name, n):  # type: ignore[no-untyped-def]
    return len(await shadow_results(redis, name)) >= n


async def _decisions_at_least(redis, name, n):  # type: ignore[no-untyped-def]
    return await decision_count(redis, name) >= n


async def _count_is(items, n):  # type: ignore[no-untyped-def]
    return len(items) == n


def test_a_json_pointer_compares_one_value_of_the_bodies():
    primary = b'{"predicted_label": 3, "scores": [0.1, 0.9], "model": "a"}'
    assert same_body(primary, b'{"predicted_label": 3, "model": "b"}', "/predicted_label")
    assert not same_body(primary, b'{"predicted_label": 4}', "/predicted_label")
    assert same_body(primary, b'{"scores": [0.2, 0.9]}', "/scores/1")
    assert not same_body(primary, b'{"scores": [0.2]}', "/scores/1")  # absent in one
    assert not same_body(primary, b'{"other": 3}', "/predicted_label")
    assert not same_body(b"plain", b"plain", "/x")  # not JSON: nothing to point at
    assert same_body(b'{"a/b": {"~": 1}}', b'{"a/b": {"~": 1}, "c": 2}', "/a~1b/~0")


async def test_shadow_results_reach_stats_and_metrics(start_router, redis, control, name):
    """Per shadow arm: agreement at a JSON pointer, errors, status differences, latency."""

    async def half_agree(request: web.Request, body: bytes) -> web.StreamResponse:
        label = 3 if b"same" in body else 4
        return web.json_response({"predicted_label": label, "model": "candidate"})

    async def broken(request: web.Request, body: bytes) -> web.StreamResponse:
        return web.json_response({"error": "out of memory"}, status=500)

    async with (
        run_backend(Backend(label=3)) as primary,
        run_backend(Backend(reply=half_agree)) as candidate,
        run_backend(Backend(reply=broken)) as failing,
    ):
        spec = make_spec(
            name,
            [("primary", primary.url), ("candidate", candidate.url), ("failing", failing.url)],
            mode="shadow",
            shadow={
                "primary": "primary",
                "shadows": ["candidate", "failing"],
                "compare_pointer": "/predicted_label",
            },
        )
        url, _ = await start_router(spec)
        await invoke_many(url, name, _ids("same", 6), body={"features": ["same"]})
        await invoke_many(url, name, _ids("diff", 2), body={"features": ["different"]})
        await wait_for(lambda: _results_at_least(redis, name, 16))

    stats = await control.get(f"/v1/experiments/{name}/stats")
    shadow = stats["shadow"]
    assert shadow["primary"] == "primary"
    by_arm = {a["arm"]: a for a in shadow["arms"]}
    assert set(by_arm) == {"candidate", "failing"}
    good, bad = by_arm["candidate"], by_arm["failing"]
    assert good["mirrored"] == good["compared"] == 8
    assert good["agreement_rate"] == 6 / 8
    assert good["status_differs"] == 0 and good["shadow_error_rate"] == 0.0
    assert bad["mirrored"] == 8 and bad["agreement_rate"] == 0.0
    assert bad["status_differs_rate"] == 1.0 and bad["shadow_error_rate"] == 1.0
    assert bad["primary_error_rate"] == 0.0
    for entry in (good, bad):
        for side in ("primary_latency_ms", "shadow_latency_ms"):
            latency = entry[side]
            assert latency["mean"] > 0 and 0 < latency["p50"] <= latency["p99"]

    text = await control.get("/metrics")
    labels = (("arm", "candidate"), ("experiment", name))
    assert metric_values(text, "banditgate_shadow_agreed")[labels] == 6
    assert metric_values(text, "banditgate_shadow_compared")[labels] == 8
    failing_labels = (("arm", "failing"), ("experiment", name))
    assert metric_values(text, "banditgate_shadow_errors")[failing_labels] == 8
    assert metric_values(text, "banditgate_shadow_mirrored")[failing_labels] == 8
    latency = metric_values(text, "banditgate_shadow_latency_seconds")
    assert any(dict(k).get("arm") == "candidate" for k in latency)


async def test_an_experiment_without_shadows_has_no_shadow_section(control, redis, name):
    status, _ = await control.call(
        "PUT",
        f"/v1/experiments/{name}",
        {"name": name, "mode": "ab", "arms": [{"name": "a", "url": "http://127.0.0.1:9"}]},
    )
    assert status in (200, 201)
    assert (await control.get(f"/v1/experiments/{name}/stats"))["shadow"] is None
