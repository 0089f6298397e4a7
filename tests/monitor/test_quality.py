"""Model quality per arm from ground-truth labels posted after the predictions."""

from __future__ import annotations

import orjson
import pytest

from banditgate import keys
from banditgate.spec import parse_spec
from monitor.worker import Monitor
from tests.experiments.test_dashboard import browser, open_page  # noqa: F401 (a fixture)
from tests.experiments.test_metrics import samples, scrape, value
from tests.support import Backend, Control, make_spec, run_backend
from tests.traffic import invoke_many


def quality_spec(name: str, a: str, b: str, **quality: object):  # type: ignore[no-untyped-def]
    return make_spec(
        name,
        [("good", a), ("bad", b)],
        mode="ab",
        capture={"sample_percent": 100},
        quality={"problem": "classification", "prediction": "predicted_label", **quality},
    )


async def test_labels_posted_later_score_each_arms_predictions(
    start_router, control: Control, redis, name, tmp_path
):
    """The router logs and captures; labels arrive later by event id; the monitor scores
    each arm: the one that predicts 4 is right, the one that predicts 2 mostly wrong."""
    async with run_backend(Backend(label=4)) as good, run_backend(Backend(label=2)) as bad:
        spec = quality_spec(name, good.url, bad.url, min_labels=10)
        await control.call("POST", "/v1/experiments", spec.model_dump(mode="json"))
        url, app = await start_router(spec, data_dir=tmp_path)
        ids = [f"gt-{i}" for i in range(120)]
        replies = await invoke_many(url, name, ids)
        await app.capture.flush()
    variants = {r.event_id: r.variant for r in replies}
    # The truth is 4 for every request but one in ten, where it is 2.
    labels = [
        {"event_id": event_id, "label": 2 if i % 10 == 0 else 4} for i, event_id in enumerate(ids)
    ]
    labels.append({"event_id": "never-routed", "label": 4})
    status, answer = await control.call("POST", "/v1/ground-truth", {"labels": labels})
    assert status == 200, answer
    assert answer["accepted"] == 120 and answer["by_experiment"] == {name: 120}
    assert answer["unknown"] == 1 and answer["unknown_event_ids"] == ["never-routed"]

    reports = await Monitor(redis, tmp_path).quality_once(spec)
    good_n = sum(v == "good" for v in variants.values())
    good_report, bad_report = reports["good"]["current"], reports["bad"]["current"]
    assert good_report["n"] == good_n and bad_report["n"] == 120 - good_n
    expected_good = (
        sum(1 for i, e in enumerate(ids) if variants[e] == "good" and i % 10 != 0) / good_n
    )
    assert good_report["accuracy"] == pytest.approx(expected_good)
    assert bad_report["accuracy"] < 0.3
    low, high = good_report["accuracy_ci"]
    assert low < good_report["accuracy"] < high
    assert 0 <= bad_report["f1"] <= 1 and bad_report["classes"] == 2
    assert reports["good"]["previous"]["n"] == 0 and reports["good"]["alert"] is None

    shown = await control.get(f"/v1/experiments/{name}/monitor")
    assert shown["quality"]["configured"] and shown["quality"]["labels_received"] == 120
    assert shown["quality"]["arms"]["bad"]["current"]["accuracy"] == bad_report["accuracy"]
    m = samples(await scrape(control.url))
    accuracy = m[
        ("banditgate_quality", (("arm", "good"), ("experiment", name), ("metric", "accuracy")))
    ]
    assert accuracy == pytest.approx(expected_good)
    assert value(m, "banditgate_quality_labels", experiment=name, arm="bad") == 120 - good_n
    assert value(m, "banditgate_quality_alert", experiment=name, arm="good") == 0


async def test_a_drop_against_the_previous_window_raises_an_alert(redis, name, tmp_path):
    from monitor.quality import Score, alert

    spec = parse_spec(
        {
            "name": name,
            "arms": [{"name": "a", "url": "http://127.0.0.1:9"}],
            "capture": {},
            "quality": {"min_labels": 20, "alert_drop": 0.05},
        }
    ).quality
    assert spec is not None
    before = Score(pairs=[(1, 1)] * 90 + [(1, 0)] * 10).classification()
    after = Score(pairs=[(1, 1)] * 70 + [(1, 0)] * 30).classification()
    message = alert(spec, after, before)
    assert message is not None and "fell from 0.900 (100 labels) to 0.700" in message
    assert alert(spec, before, before) is None
    few = Score(pairs=[(1, 0)] * 5).classification()
    assert alert(spec, few, before) is None  # too few labels to judge
    regression = parse_spec(
        {
            "name": name,
            "arms": [{"name": "a", "url": "http://127.0.0.1:9"}],
            "capture": {},
            "quality": {"problem": "regression", "min_labels": 3, "alert_drop": 0.5},
        }
    ).quality
    assert regression is not None
    calm = Score(pairs=[(1.0, 1.1), (2.0, 1.9), (3.0, 3.2)]).regression()
    wild = Score(pairs=[(1.0, 3.0), (2.0, 4.0), (3.0, 0.0)]).regression()
    assert calm["mae"] == pytest.approx(0.4 / 3) and calm["rmse"] > calm["mae"]
    assert "MAE rose" in (alert(regression, wild, calm) or "")


async def test_bad_labels_are_refused_with_their_field(control: Control):
    cases = [
        ({"labels": []}, "body.labels"),
        ({"label": []}, "body.labels"),
        ({"labels": [{"event_id": "", "label": 1}]}, "body.labels[0].event_id"),
        ({"labels": [{"event_id": "e", "label": {"a": 1}}]}, "body.labels[0].label"),
        ({"labels": [{"event_id": "e"}]}, "body.labels[0].label"),
        ({"labels": [{"event_id": "e", "label": 1, "extra": 2}]}, "body.labels[0]"),
    ]
    for body, field in cases:
        status, error = await control.call("POST", "/v1/ground-truth", body)
        assert status == 422 and error["error"]["field"] == field, (body, error)
    status, _ = await control.call("POST", "/v1/ground-truth", cases[2][0], key=None)
    assert status in (401, 403)


def test_quality_needs_captured_answers():
    with pytest.raises(Exception, match="captured answers"):
        parse_spec(
            {
                "name": "x",
                "arms": [{"name": "a", "url": "http://127.0.0.1:9"}],
                "capture": {"response": False},
                "quality": {},
            }
        )


async def test_the_dashboard_shows_model_quality(
    control: Control,
    redis,
    name,
    tmp_path,
    browser,  # noqa: F811 (the fixture)
):
    spec = quality_spec(name, "http://127.0.0.1:9", "http://127.0.0.1:9")
    await control.call("POST", "/v1/experiments", spec.model_dump(mode="json"))
    report = {
        "arm": "good",
        "problem": "classification",
        "finished_ms": 1,
        "window_s": 3600,
        "current": {"n": 50, "accuracy": 0.7, "accuracy_ci": [0.56, 0.81], "f1": 0.6},
        "previous": {"n": 60, "accuracy": 0.9},
        "alert": "accuracy fell from 0.900 (60 labels) to 0.700 (50)",
    }
    await redis.hset(keys.monitor_quality(name), "good", orjson.dumps(report))
    page, problems = await open_page(browser, f"{control.url}/dashboard/{name}")
    await page.wait_for_selector('#quality-table tr[data-arm="good"]')
    cells = await page.locator('#quality-table tr[data-arm="good"] td').all_inner_texts()
    assert cells[1] == "accuracy 70.0%" and cells[4] == "50"
    assert "accuracy fell" in cells[6]
    assert problems == []
