"""Baselines from training data, drift checks of captured traffic, and where they show."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from banditgate import keys
from banditgate.errors import InvalidInput
from banditgate.spec import parse_spec
from banditgate_app.cli import app
from monitor.check import baseline_from_file, check_arm
from monitor.profile import Profiler, Thresholds, numeric_distance, violations
from monitor.worker import Monitor
from router.capture import Captured, CapturePlan, DataCapture
from tests.experiments.test_dashboard import browser, open_page  # noqa: F401 (a fixture)
from tests.experiments.test_metrics import samples, scrape, value
from tests.support import ADMIN_KEY, Control

runner = CliRunner()
WORDS = ["battery", "screen", "great", "poor", "fast", "slow", "camera", "price"]


def review(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def bodies(n: int, *, words: tuple[int, int], tiers: list[str], seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {"features": [review(rng, rng.randint(*words))], "user": {"tier": rng.choice(tiers)}}
        for _ in range(n)
    ]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


async def capture(data_dir: Path, experiment: str, arm: str, rows: list[dict[str, Any]]) -> None:
    """Write rows through the router's real capture writer, as routed traffic would."""
    writer = DataCapture(data_dir)
    plan = CapturePlan(1.0, True, True, 1 << 16, None)
    for i, row in enumerate(rows):
        writer.submit(
            Captured(
                experiment=experiment,
                arm=arm,
                event_id=f"{arm}-{i}",
                ts=time.time(),
                policy_version=0,
                status=200,
                latency_ms=2.0,
                request=orjson.dumps(row),
                request_type="application/json",
                response=orjson.dumps(
                    {"predicted_label": 4 if "great" in row["features"][0] else 2}
                ),
                response_type="application/json",
                plan=plan,
            )
        )
    await writer.stop()


async def test_drifted_arm_is_flagged_and_the_steady_one_is_not(tmp_path):
    base = baseline_from_file(
        write_jsonl(tmp_path / "train.jsonl", bodies(3000, words=(5, 15), tiers=["a", "b"], seed=1))
    )
    stats = {f["name"]: f for f in base["statistics"]["features"]}
    assert stats["len(features.0)"]["inferred_type"] == "Integral"
    assert stats["user.tier"]["inferred_type"] == "String"
    assert stats["features.0"]["completeness"] == 1.0
    await capture(tmp_path, "exp", "steady", bodies(800, words=(5, 15), tiers=["a", "b"], seed=2))
    drifted = bodies(800, words=(30, 60), tiers=["a", "b", "c"], seed=3)
    for row in drifted[:200]:
        del row["user"]  # a quarter of requests lose the tier
    await capture(tmp_path, "exp", "drifted", drifted)

    checks = {}
    for arm in ("steady", "drifted"):
        checks[arm] = check_arm(
            tmp_path / "capture",
            "exp",
            arm,
            base,
            window_s=600,
            thresholds=Thresholds(),
            features=["len(features.0)", "user.tier", "features.0"],
        )
    steady, moved = checks["steady"], checks["drifted"]
    assert steady.records == moved.records == 800
    assert steady.violations == []
    assert steady.distances["len(features.0)"] < 0.1
    kinds = {(v["feature_name"], v["constraint_check_type"]) for v in moved.violations}
    assert ("len(features.0)", "baseline_drift_check") in kinds
    assert ("user.tier", "completeness_check") in kinds
    assert ("user.tier", "baseline_drift_check") in kinds  # a new tier "c" takes a share
    assert moved.distances["len(features.0)"] > 0.9


def test_a_live_feature_missing_or_new_is_reported(tmp_path):
    baseline = baseline_from_file(
        write_jsonl(tmp_path / "b.jsonl", [{"a": i, "b": "x"} for i in range(50)])
    )
    live = Profiler()
    for i in range(50):
        live.add({"a": i, "c": 1.5})

    found, _ = violations(
        baseline["statistics"], baseline["constraints"], live.statistics(), Thresholds()
    )
    kinds = {(v["feature_name"], v["constraint_check_type"]) for v in found}
    assert kinds == {
        ("b", "missing_column_check"),
        ("len(b)", "missing_column_check"),  # a string's length is a feature too
        ("c", "extra_column_check"),
    }


def test_baselines_from_parquet_and_csv_report_mixed_and_empty_columns(tmp_path):
    table = pa.table(
        {
            "features.0": ["good phone", "bad", None, "ok"],
            "score": [1.0, 2.5, 3.0, None],
            "empty": pa.array([None, None, None, None], type=pa.string()),
        }
    )
    pq.write_table(table, tmp_path / "train.parquet")
    result = baseline_from_file(tmp_path / "train.parquet")
    features = {f["name"]: f for f in result["statistics"]["features"]}
    assert result["report"]["rows"] == 4
    assert features["score"]["inferred_type"] == "Fractional"
    assert features["score"]["completeness"] == 0.75
    assert features["features.0"]["completeness"] == 0.75
    assert features["empty"]["num_present"] == 0
    assert result["report"]["empty_features"] == ["empty"]
    (tmp_path / "mixed.csv").write_text("amount,tier\n1,a\nlots,b\n3,c\n")
    mixed = baseline_from_file(tmp_path / "mixed.csv")
    assert "amount" in mixed["report"]["mixed_type_features"] or {
        f["name"]: f["inferred_type"] for f in mixed["statistics"]["features"]
    }["amount"] in ("String", "Integral")
    with pytest.raises(InvalidInput, match="line 2 is not JSON"):
        (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{oops\n')
        baseline_from_file(tmp_path / "bad.jsonl")
    with pytest.raises(InvalidInput, match="Parquet, CSV or JSON lines"):
        (tmp_path / "data.xlsx").write_text("x")
        baseline_from_file(tmp_path / "data.xlsx")
    with pytest.raises(InvalidInput, match="holds no rows"):
        (tmp_path / "none.jsonl").write_text("")
        baseline_from_file(tmp_path / "none.jsonl")


def test_ks_distance_of_identical_and_disjoint_sketches():
    profile = Profiler()
    for i in range(1000):
        profile.add({"x": i})
    same = profile.statistics()["features"][0]
    assert numeric_distance(same, same) == 0.0
    other = Profiler()
    for i in range(1000):
        other.add({"x": 5000 + i})
    assert numeric_distance(same, other.statistics()["features"][0]) == 1.0


async def test_baseline_command_worker_api_and_metrics(control: Control, redis, name, tmp_path):
    spec = {
        "name": name,
        "mode": "ab",
        "arms": [
            {"name": "a", "url": "http://127.0.0.1:9"},
            {"name": "b", "url": "http://127.0.0.1:9"},
        ],
        "capture": {"sample_percent": 100},
        "monitor": {"every_s": 60, "features": ["len(features.0)", "user.tier"]},
    }
    status, _ = await control.call("POST", "/v1/experiments", spec)
    assert status == 201
    training = write_jsonl(
        tmp_path / "train.jsonl", bodies(2000, words=(5, 15), tiers=["a", "b"], seed=1)
    )
    result = await asyncio.to_thread(
        runner.invoke,
        app,
        [
            "monitor",
            "baseline",
            "-e",
            name,
            "--from",
            str(training),
            "--out",
            str(tmp_path / "baseline"),
            "--url",
            control.url,
            "--admin-key",
            ADMIN_KEY,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "stored as" in result.output
    stored = orjson.loads((tmp_path / "baseline" / "constraints.json").read_bytes())
    assert {f["name"] for f in stored["features"]} >= {"len(features.0)", "user.tier"}

    await capture(tmp_path, name, "a", bodies(300, words=(5, 15), tiers=["a", "b"], seed=5))
    await capture(tmp_path, name, "b", bodies(300, words=(40, 60), tiers=["a", "b"], seed=6))
    monitor = Monitor(redis, tmp_path)
    reports = await monitor.run_once(parse_spec(spec))
    assert reports["a"]["violations"] == [] and reports["a"]["records"] == 300
    assert [v["feature_name"] for v in reports["b"]["violations"]] == ["len(features.0)"]
    folder = Path(reports["b"]["report"])
    assert orjson.loads((folder / "constraint_violations.json").read_bytes())["violations"]
    assert (folder / "statistics.json").is_file()

    shown = await control.get(f"/v1/experiments/{name}/monitor")
    assert shown["configured"] and shown["baseline"]
    assert len(shown["arms"]["b"]["violations"]) == 1
    m = samples(await scrape(control.url))
    assert value(m, "banditgate_monitor_violations", experiment=name, arm="b") == 1
    assert value(m, "banditgate_monitor_violations", experiment=name, arm="a") == 0
    assert value(m, "banditgate_monitor_records", experiment=name, arm="a") == 300
    assert (
        value(m, "banditgate_monitor_distance", experiment=name, arm="b", feature="len(features.0)")
        > 0.5
    )
    listed = await asyncio.to_thread(
        runner.invoke,
        app,
        ["monitor", "show", "-e", name, "--url", control.url],
        env={"BANDITGATE_READ_KEYS": ADMIN_KEY},  # reads need a key once keys are set
    )
    assert listed.exit_code == 0 and "len(features.0)" in listed.output


async def test_bad_baselines_and_specs_are_refused_with_their_field(control: Control, name):
    spec = {"name": name, "arms": [{"name": "a", "url": "http://127.0.0.1:9"}]}
    await control.call("POST", "/v1/experiments", spec)
    path = f"/v1/experiments/{name}/monitor/baseline"
    status, error = await control.call("PUT", path, {"statistics": {"features": []}})
    assert status == 422 and error["error"]["field"] == "body.constraints"
    status, error = await control.call(
        "PUT",
        path,
        {
            "statistics": {"features": [{"name": "x"}]},
            "constraints": {"features": [{"name": "y"}]},
        },
    )
    assert status == 422 and error["error"]["field"] == "body.constraints.features[0]"
    status, _ = await control.call("PUT", path, {"statistics": {}, "constraints": {}}, key=None)
    assert status in (401, 403)
    status, error = await control.call("GET", path)
    assert status == 404
    with pytest.raises(Exception, match="add capture"):
        parse_spec({**spec, "monitor": {}})
    with pytest.raises(Exception) as raised:
        parse_spec({**spec, "capture": {}, "monitor": {"thresholds": {"numeric": 2}}})
    assert getattr(raised.value, "field", "") == "monitor.thresholds.numeric"


async def test_the_dashboard_shows_each_arms_latest_check(
    control: Control,
    redis,
    name,
    tmp_path,
    browser,  # noqa: F811 (the fixture)
):
    spec = {
        "name": name,
        "arms": [{"name": "a", "url": "http://127.0.0.1:9"}],
        "capture": {},
        "monitor": {"every_s": 60},
    }
    await control.call("POST", "/v1/experiments", spec)
    baseline = baseline_from_file(
        write_jsonl(tmp_path / "t.jsonl", bodies(500, words=(5, 10), tiers=["a"], seed=1))
    )
    await redis.set(
        keys.monitor_baseline(name),
        orjson.dumps(
            {"statistics": baseline["statistics"], "constraints": baseline["constraints"]}
        ),
    )
    await capture(tmp_path, name, "a", bodies(200, words=(50, 60), tiers=["a"], seed=2))
    await Monitor(redis, tmp_path).run_once(parse_spec(spec))
    page, problems = await open_page(browser, f"{control.url}/dashboard/{name}")
    await page.wait_for_selector('#monitor-table tr[data-arm="a"]')
    cells = await page.locator('#monitor-table tr[data-arm="a"] td').all_inner_texts()
    assert cells[2] == "200" and int(cells[3]) >= 1
    assert "len(features.0)" in cells[5]
    assert problems == []
