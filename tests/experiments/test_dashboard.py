"""The dashboards in a real headless browser (Debian's chromium, driven by playwright)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from playwright.async_api import Browser, Page, async_playwright

from banditgate import keys
from banditgate.events import shadow_batch_fields
from banditgate.redis import Redis
from banditgate.registry import PolicyRegistry
from banditgate.spec import ExperimentSpec
from experiments.controller import Controller
from tests.experiments.conftest import (
    ADMIN_KEY,
    Control,
    decision,
    spec_doc,
    write_decisions,
)
from tests.router.test_policy_serving import trained_model

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Screenshots of the pages the tests drive, kept for a person to look at (CI keeps the folder).
ARTIFACTS = Path(os.environ.get("BANDITGATE_TEST_ARTIFACTS", "test-artifacts"))
ARTIFACTS.mkdir(parents=True, exist_ok=True)


def chromium_path() -> str:
    """Debian's chromium; without one the browser tests skip, or fail when CI requires them."""
    path = os.environ.get("BANDITGATE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(path):
        reason = f"no Chromium at {path}: apt-get install chromium (or set BANDITGATE_CHROMIUM)"
        if os.environ.get("BANDITGATE_REQUIRE_BROWSER", "") not in ("", "0"):
            pytest.fail(f"BANDITGATE_REQUIRE_BROWSER is set and there is {reason}", pytrace=False)
        pytest.skip(reason)
    return path


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    path = chromium_path()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


async def seed(redis: Redis, name: str, *, skew: float) -> None:
    """20 minutes of bandit traffic (b's share grows), rewards joined 30 s after each decision."""
    rng = np.random.default_rng(17)
    now = int(time.time() * 1000)
    start = now - 1_200_000
    means = {"a": 0.3, "b": 0.45}
    rows = []
    for i in range(3000):
        p_b = 0.3 + 0.5 * i / 3000
        chosen = "b" if rng.random() < p_b else "a"
        if chosen == "a" and rng.random() < skew:
            chosen = "b"
        row = decision(
            name,
            chosen,
            [1 - p_b, p_b],
            ts_ms=start + i * 400,
            event_id=str(i),
            latency_ms=float(rng.gamma(2.0, 8.0)),
            status=503 if i % 500 == 7 else 200,
        )
        row["context"] = {"x-device": "mobile" if i % 3 else "desktop"}
        rows.append(row)
    async with redis.pipeline(transaction=False) as pipe:
        for j in range(0, len(rows), 100):
            batch = rows[j : j + 100]
            pipe.xadd(
                keys.decisions(name),
                {"n": len(batch), "b": orjson.dumps(batch)},
                id=f"{batch[-1]['ts_ms']}-0",
            )
        for i, d in enumerate(rows):
            joined_ms = d["ts_ms"] + 30_000
            if joined_ms > now - 60_000:  # keep clear of the rolling window's edge
                break
            reward = float(rng.random() < means[d["chosen"]])
            fields = {
                "d": orjson.dumps(d),
                "r": repr(reward),
                "rw": b"1" if reward else b"0",
                "n": 1,
                "jt": joined_ms,
            }
            pipe.xadd(keys.joined(name), fields, id=f"{joined_ms}-{i}")
        await pipe.execute()
    await redis.hset(
        keys.join_counters(name),
        mapping={"rewards_received": 950, "rewards_late": 4, "rewards_orphaned": 2},
    )


async def open_page(browser: Browser, url: str) -> tuple[Page, list[str]]:
    # Reads need a key: the browser answers the Basic challenge with it, as a user would.
    page = await browser.new_page(
        viewport={"width": 1400, "height": 1800},
        http_credentials={"username": "admin", "password": ADMIN_KEY},
    )
    problems: list[str] = []
    page.on(
        "console",
        lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
    )
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.on(
        "response",
        lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None,
    )
    await page.goto(url)
    await page.wait_for_function(
        "window.banditgate && window.banditgate.renders >= 1", timeout=15_000
    )
    return page, problems


def by_time(xs: list[float], values: list[Any]) -> dict[int, Any]:
    return {round(x * 1000): v for x, v in zip(xs, values, strict=True)}


def assert_series_match(
    chart: list[list[Any]], labels: list[str], api: dict[str, Any], field: str, suffix: str = ""
) -> None:
    api_t = api["t"]
    checked = 0
    for index, arm in enumerate(api["arms"]):
        label = f"{arm}{suffix}"
        column = chart[1 + labels.index(label)]
        shown = by_time(chart[0], column)
        for t, expected in zip(api_t, api["arms"][arm][field], strict=True):
            if t not in shown:
                continue  # the page and the API call may straddle a step boundary
            if expected is None:
                assert shown[t] is None, (label, t)
            else:
                assert shown[t] == pytest.approx(expected, rel=1e-12), (label, t)
                checked += 1
        assert index < len(labels)
    assert checked > 20  # the comparison covered real data, not only empty steps


async def test_experiment_dashboard_draws_what_the_api_returns(
    control: Control, browser: Browser, redis: Redis, name: str
) -> None:
    await control.call("POST", "/v1/experiments", spec_doc(name, description="reviews"))
    await seed(redis, name, skew=0.15)

    page, problems = await open_page(browser, f"{control.url}/dashboard/{name}")
    stats = await control.get(f"/v1/experiments/{name}/stats?window_s=3600")
    series = await control.get(f"/v1/experiments/{name}/timeseries?window_s=3600")

    charts = await page.evaluate(
        """() => Object.fromEntries(Object.entries(window.banditgate.charts).map(([k, c]) =>
               [k, {data: c.plot.data, labels: c.plot.series.slice(1).map(s => s.label)}]))"""
    )
    assert set(charts) == {
        "traffic",
        "probabilities",
        "reward",
        "cumulative",
        "regret",
        "latency",
        "errors",
        "volume",
    }
    assert charts["traffic"]["labels"] == ["a", "b"]
    assert_series_match(charts["traffic"]["data"], charts["traffic"]["labels"], series, "share")
    probabilities = charts["probabilities"]
    assert_series_match(
        probabilities["data"], probabilities["labels"], series, "action_p", " action"
    )
    assert_series_match(
        probabilities["data"], probabilities["labels"], series, "sampled_p", " sampled"
    )
    assert_series_match(
        charts["reward"]["data"], charts["reward"]["labels"], series, "rolling_reward"
    )

    assert_series_match(
        charts["latency"]["data"], charts["latency"]["labels"], series, "latency_p50_ms", " p50"
    )
    assert_series_match(
        charts["latency"]["data"], charts["latency"]["labels"], series, "latency_p99_ms", " p99"
    )
    assert_series_match(charts["errors"]["data"], charts["errors"]["labels"], series, "error_rate")
    assert_series_match(charts["volume"]["data"], charts["volume"]["labels"], series, "decisions")
    cumulative = charts["cumulative"]
    assert cumulative["labels"][0] == "obtained"
    shown = by_time(cumulative["data"][0], cumulative["data"][1])
    api_cumulative = by_time([t / 1000 for t in series["t"]], series["cumulative"]["mean_reward"])
    common = [t for t in api_cumulative if t in shown and api_cumulative[t] is not None]
    assert len(common) > 20
    for t in common:
        assert shown[t] == pytest.approx(api_cumulative[t], rel=1e-12)
    # The time axis starts at the first decision (20 minutes back), not an hour back.
    assert charts["traffic"]["data"][0][0] * 1000 == series["t"][0]
    assert series["t"][0] > series["window_start_ms"]

    rows = await page.eval_on_selector_all(
        "#chart-ci .ci-row",
        "els => els.map(e => ({arm: e.dataset.arm, mean: e.dataset.mean,"
        " lo: e.dataset.lo, hi: e.dataset.hi, n: e.dataset.n}))",
    )
    assert [r["arm"] for r in rows] == ["a", "b"]
    for row in rows:
        expected = next(a for a in stats["arms"] if a["arm"] == row["arm"])
        assert float(row["mean"]) == pytest.approx(expected["mean_reward"], rel=1e-12)
        assert float(row["lo"]) == pytest.approx(expected["mean_reward_ci"][0], rel=1e-12)
        assert float(row["hi"]) == pytest.approx(expected["mean_reward_ci"][1], rel=1e-12)
        assert int(row["n"]) == expected["reward_n"]
        assert expected["reward_n"] > 100

    table = await page.eval_on_selector_all(
        "#arms-table tbody tr", "els => els.map(e => [e.dataset.arm, e.children[1].textContent])"
    )
    assert {arm: int(text.replace(",", "")) for arm, text in table} == {
        a["arm"]: a["decisions"] for a in stats["arms"]
    }

    assert stats["srm"]["flagged"] is True  # the seeded log moved 15% of a's traffic to b
    assert await page.is_visible("#srm")
    assert "Sample ratio mismatch" in await page.inner_text("#srm")
    assert await page.get_attribute("#srm-state", "data-flagged") == "1"
    assert (
        await page.inner_text("#rollout-phase") == "Learning"
    )  # the rollout API's phase for a bandit
    await page.select_option("#segment-feature", "x-device")
    await page.wait_for_selector('#segments-table tr[data-segment="mobile"]')
    segments = await control.get(f"/v1/experiments/{name}/segments?feature=x-device&window_s=3600")
    shown_segments = await page.eval_on_selector_all(
        "#segments-table tbody tr",
        "els => els.map(e => [e.dataset.segment, e.children[1].textContent])",
    )
    assert {s: int(n.replace(",", "")) for s, n in shown_segments} == {
        s["segment"]: s["n"] for s in segments["segments"]
    }
    assert "segment=x-device" in page.url
    await page.screenshot(path=str(ARTIFACTS / f"bandit-{name}.png"), full_page=True)
    cards = await page.inner_text("#cards")
    assert f"{stats['totals']['decisions']:,}" in cards
    assert "4 / 2" in cards  # late / orphaned rewards from the joiner's counters

    await page.goto(f"{control.url}/dashboard")
    await page.wait_for_function(
        "window.banditgate && window.banditgate.renders >= 1", timeout=15_000
    )
    row = page.locator(f'tr[data-experiment="{name}"]')
    assert await row.locator("a").get_attribute("href") == f"dashboard/{name}"
    assert "SRM" in await row.inner_text()
    assert problems == []


async def test_rollout_phase_and_history_are_shown(
    control: Control, browser: Browser, redis: Redis, name: str
) -> None:
    await control.call(
        "POST",
        "/v1/experiments",
        spec_doc(name, mode="canary", canary={"baseline": "a", "canary": "b", "steps": [25, 100]}),
    )
    controller = Controller(redis=redis, experiments=[name])
    await controller.run_once()  # starts the canary at its first step
    await control.call("POST", f"/v1/experiments/{name}/rollout/pause", {"reason": "look first"})
    await controller.close()
    rollout = await control.get(f"/v1/experiments/{name}/rollout")
    assert rollout["phase"] == "Paused" and rollout["weights"] == {"a": 75.0, "b": 25.0}
    page, problems = await open_page(browser, f"{control.url}/dashboard/{name}")
    assert await page.inner_text("#rollout-phase") == "Paused"
    bars = await page.eval_on_selector(
        "#rollout .weights", "e => [...e.children].map(c => c.title)"
    )
    assert bars == ["a 75.0%", "b 25.0%"]
    history = await page.eval_on_selector_all(
        "#rollout ul.history li", "els => els.map(e => e.textContent)"
    )
    assert len(history) == len(rollout["history"]) >= 2
    assert "look first" in history[0]  # newest first
    assert problems == []


async def test_the_page_refreshes_itself(
    control: Control, browser: Browser, redis: Redis, name: str
) -> None:
    await control.call("POST", "/v1/experiments", spec_doc(name))
    await write_decisions(redis, name, [decision(name, "a", [0.5, 0.5])] * 2)
    page, problems = await open_page(browser, f"{control.url}/dashboard/{name}?refresh=1")
    assert await page.evaluate("window.banditgate.data.stats.totals.decisions") == 2
    await write_decisions(redis, name, [decision(name, "b", [0.5, 0.5])] * 3)
    await page.wait_for_function(
        "window.banditgate.data.stats.totals.decisions === 5", timeout=15_000
    )
    row = await page.eval_on_selector(
        '#arms-table tr[data-arm="b"]', "e => e.children[1].textContent"
    )
    assert row == "3"
    assert problems == []


async def test_unknown_experiment_page_is_404(control: Control, name: str) -> None:
    status, body = await control.call("GET", f"/dashboard/{name}")
    assert status == 404
    assert body["error"]["type"] == "UnknownExperiment"
    status, _ = await control.call("GET", "/dashboard/_static/../app.py")
    assert status == 404


async def test_shadow_arms_are_compared_with_the_primary(
    control: Control, browser: Browser, redis: Redis, name: str
) -> None:
    spec = spec_doc(
        name,
        arms=("live", "next"),
        mode="shadow",
        shadow={"primary": "live", "shadows": ["next"], "compare_bodies": True},
    )
    await control.call("POST", "/v1/experiments", spec)
    now = int(time.time() * 1000)
    results = [
        {
            "event_id": str(i),
            "experiment": name,
            "ts_ms": now - 60_000 + i,
            "primary": {"arm": "live", "status": 200, "latency_ms": 12.0},
            "shadow": {"arm": "next", "status": 500 if i < 4 else 200, "latency_ms": 30.0},
            "same_body": i % 5 != 0,
        }
        for i in range(40)
    ]
    await redis.xadd(keys.shadow_results(name), shadow_batch_fields(results))  # type: ignore[arg-type]
    stats = await control.get(f"/v1/experiments/{name}/stats")
    (entry,) = stats["shadow"]["arms"]
    assert entry["agreement_rate"] == 32 / 40 and entry["shadow_error_rate"] == 4 / 40

    page, problems = await open_page(browser, f"{control.url}/dashboard/{name}")
    assert await page.is_visible("#shadow-panel")
    row = page.locator('#shadow-table tr[data-arm="next"]')
    cells = await row.locator("td").all_inner_texts()
    assert cells[1] == "40"
    assert cells[2] == "80.0%" and cells[4] == "10.0%"
    assert "agrees with live" in await page.inner_text("#shadow-table thead")
    await page.screenshot(path=str(ARTIFACTS / f"shadow-{name}.png"), full_page=True)
    assert problems == []


async def test_policy_versions_are_marked_on_the_time_axes(
    control: Control, browser: Browser, redis: Redis, name: str
) -> None:
    await control.call("POST", "/v1/experiments", spec_doc(name))
    await seed(redis, name, skew=0.0)
    spec = ExperimentSpec.model_validate(spec_doc(name))
    registry = PolicyRegistry(redis)
    await registry.publish(name, trained_model(spec, best="b"), learner="vw")
    history = (await control.get(f"/v1/experiments/{name}/policies"))["history"]
    page, problems = await open_page(browser, f"{control.url}/dashboard/{name}")
    marks = await page.evaluate("() => window.banditgate.marks")
    assert [(m["version"], round(m["t"] * 1000)) for m in marks] == [
        (h["version"], h["ts_ms"]) for h in history
    ]
    assert problems == []
