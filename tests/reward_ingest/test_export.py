"""Parquet and DSJSON export: readable by pandas, DuckDB and stock VW; crash-safe; S3; flush."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import duckdb
import orjson
import pandas as pd
import pyarrow.parquet as pq
import pytest
import vowpalwabbit

from banditgate import contracts, keys
from banditgate.featurize import arm_action_lines, example_lines
from banditgate.policy import ActionSet, VWPolicy, workspace_from_bytes, workspace_to_bytes
from banditgate.spec import ExperimentSpec, parse_spec
from banditgate.store import ExperimentStore
from reward_ingest import export_worker
from reward_ingest.export_worker import Exporter
from reward_ingest.settings import IngestSettings
from reward_ingest.worker import Joiner
from tests.reward_ingest.conftest import Clock, add_reward, decision, log_decisions
from tests.support import ADMIN_KEY, wait_for

ROOT = Path(__file__).resolve().parents[2]


class Killed(Exception):
    pass


CONTEXTS = [
    {"t.len": "15", "t.pos": "1+", "t.question": True, "h.x-segment": "gold", "user.age": 31.0},
    {
        "t.len": "5",
        "t.neg": "1+",
        "t.caps": True,
        "h.x-segment": "free",
        "_private": "x",
        "tags": ["a", "b"],
    },
    {"t.len": "40", "h.x-segment": "gold", "user.age": 65.0, "t.negation": False},
]


def spec_with_arm_features(name: str) -> ExperimentSpec:
    return parse_spec(
        {
            "name": name,
            "arms": [
                {
                    "name": "bert-1",
                    "url": "http://127.0.0.1:9",
                    "features": {"size": "base", "gpu": False},
                },
                {
                    "name": "bert-2",
                    "url": "http://127.0.0.1:9",
                    "features": {"size": "large", "gpu": True},
                },
                {"name": "bert-3", "url": "http://127.0.0.1:9", "features": {"params": 110.0}},
            ],
            "reward": {"window_s": 1, "min": -1, "max": 1, "aggregation": "sum"},
        }
    )


async def joined_run(
    redis: Any, name: str, clock: Clock, settings: IngestSettings, n: int = 60
) -> dict[str, Any]:
    """`n` decisions through the joiner (two thirds rewarded); returns the decisions by event id."""
    spec = spec_with_arm_features(name)
    await ExperimentStore(redis).put(spec)
    t = clock.ms
    decisions = {}
    for i in range(n):
        chosen = spec.arm_names[i % 3]
        pmf = [0.2, 0.3, 0.5]
        item = decision(
            name,
            f"ev-{i}",
            t - i * 1000,
            arms=tuple(spec.arm_names),
            chosen=chosen,
            pmf=pmf,
            context=CONTEXTS[i % 3],
            policy_version=i % 4,
        )
        decisions[item["event_id"]] = item
    await log_decisions(redis, list(decisions.values()))
    for i in range(n):
        if i % 3 != 2:
            await add_reward(redis, name, f"ev-{i}", 1.0 if i % 2 else -0.5, t - i * 1000 + 1)
    clock.advance(2)
    await Joiner(redis=redis, settings=settings, clock=clock, experiments=[name]).run_once()
    return decisions


def parquet_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.parquet") if "_dsjson" not in p.parts)


async def test_parquet_readable_by_pandas_and_duckdb(redis, name, clock, settings):
    decisions = await joined_run(redis, name, clock, settings)
    exporter = Exporter(redis=redis, settings=settings, experiments=[name], consumer="exp-test")
    assert await exporter.flush() >= 1
    root = settings.data_dir / "export" / name
    files = parquet_files(root)
    for path in files:
        relative = path.relative_to(root).parts
        assert relative[0].startswith("date=") and relative[1].startswith("hour=")
    frame = pd.read_parquet(root)
    assert len(frame) == len(decisions)
    assert list(frame.columns[:14]) == [
        "event_id",
        "experiment",
        "ts_ms",
        "policy_version",
        "mode",
        "arms",
        "pmf",
        "chosen",
        "chosen_prob",
        "forced",
        "context",
        "reward",
        "rewarded",
        "n_rewards",
    ]
    assert {"date", "hour"} <= set(frame.columns)
    row = frame.set_index("event_id").loc["ev-0"]
    assert row["reward"] == -0.5 and bool(row["rewarded"]) is True and row["n_rewards"] == 1
    assert row["chosen"] == "bert-1" and row["chosen_prob"] == 0.2
    assert list(row["arms"]) == ["bert-1", "bert-2", "bert-3"] and list(row["pmf"]) == [
        0.2,
        0.3,
        0.5,
    ]
    assert orjson.loads(row["context"]) == CONTEXTS[0]
    unrewarded = frame.set_index("event_id").loc["ev-2"]
    assert (
        unrewarded["reward"] == 0.0 and not unrewarded["rewarded"] and unrewarded["n_rewards"] == 0
    )
    first_ts = decisions["ev-0"]["ts_ms"]
    moment = dt.datetime.fromtimestamp(first_ts / 1000, tz=dt.UTC)
    assert str(row["date"]) == moment.strftime("%Y-%m-%d") and int(row["hour"]) == moment.hour

    query = (
        "SELECT count(*), sum(reward), sum(rewarded::INT), count(DISTINCT date) "
        f"FROM read_parquet('{root}/**/*.parquet', hive_partitioning = true)"
    )
    with duckdb.connect() as connection:
        count, total, rewarded, dates = connection.execute(query).fetchall()[0]
    assert count == len(decisions)
    assert dates == frame["date"].nunique()
    assert total == pytest.approx(float(frame["reward"].sum()))
    assert rewarded == 40
    # Nothing half-written is left, and every exported entry is acknowledged.
    assert not list(root.rglob("*.inprogress"))
    assert await redis.hlen(keys.export_committed(name)) == 0
    assert (await redis.xpending(keys.joined(name), contracts.EXPORTER_GROUP))["pending"] == 0


async def test_dsjson_trains_stock_vw_exactly_like_the_router_features(
    redis, name, clock, settings
):
    decisions = await joined_run(redis, name, clock, settings)
    await Exporter(redis=redis, settings=settings, experiments=[name], consumer="exp-test").flush()
    spec = spec_with_arm_features(name)
    files = sorted((settings.data_dir / "export" / name / "_dsjson").rglob("*.json"))
    lines = [line for path in files for line in path.read_text().splitlines()]
    assert len(lines) == 60

    args = "--cb_explore_adf --epsilon 0.1 --quiet --interactions ca --interactions ta"
    from_dsjson = vowpalwabbit.Workspace(f"--dsjson {args}")
    from_text = vowpalwabbit.Workspace(args)
    actions = arm_action_lines(spec.arms)
    for line in lines:
        examples = from_dsjson.parse(line)
        assert len(examples) == 1 + len(spec.arms)  # shared + one per arm: every line parsed
        from_dsjson.learn(examples)
        from_dsjson.finish_example(examples)
        record = orjson.loads(line)
        label = (record["_labelIndex"], record["_label_cost"], record["_label_probability"])
        from_text.learn(example_lines(decisions[record["EventId"]]["context"], actions, label))
    # The model stock VW trained on the export serves in the router's own policy class, and
    # predicts what a model trained on the router's text lines predicts: same features, same
    # hashes. It did learn: an untrained model predicts otherwise.
    served = VWPolicy(workspace_from_bytes(workspace_to_bytes(from_dsjson)), version=1)
    action_set = ActionSet.from_spec(spec)
    untrained = vowpalwabbit.Workspace(args)
    learned = False
    for context in CONTEXTS:
        probe = example_lines(context, actions)
        pmf = served.probabilities(context, action_set)
        assert pmf == pytest.approx(from_text.predict(probe))
        learned |= pmf != pytest.approx(untrained.predict(probe))
    assert learned


async def test_dsjson_fields(redis, name, clock, settings):
    await joined_run(redis, name, clock, settings, n=3)
    await Exporter(redis=redis, settings=settings, experiments=[name], consumer="exp-test").flush()
    files = sorted((settings.data_dir / "export" / name / "_dsjson").rglob("*.json"))
    records = {
        r["EventId"]: r
        for r in (orjson.loads(line) for p in files for line in p.read_text().splitlines())
    }
    one = records["ev-1"]  # chose bert-2 with p 0.3, reward 1.0
    assert one["_label_cost"] == -1.0 and one["_label_probability"] == 0.3
    assert one["_label_Action"] == 2 and one["_labelIndex"] == 1
    assert one["a"] == [2, 1, 3] and one["p"] == [0.3, 0.2, 0.5]
    assert one["o"] == [{"v": 1.0, "EventId": "ev-1", "ActionTaken": False}]
    assert one["VWState"] == {"m": f"{name}/1"} and one["Version"] == "1"
    assert one["c"]["_multi"][1] == {"a": {"armbert-2": True, "sizelarge": True, "gpu": True}}
    assert one["c"]["c"]["_text"] == "_privatex"  # VW skips `_` keys; `_text` keeps the feature
    assert one["Timestamp"].endswith("Z")
    assert "o" not in records["ev-2"] and records["ev-2"]["_label_cost"] == -0.0


async def test_export_flush_command_reaches_a_running_exporter(
    redis, control, name, clock, settings
):
    await joined_run(redis, name, clock, settings, n=10)
    slow = settings.model_copy(update={"export_max_age_s": 3600.0})
    exporter = Exporter(redis=redis, settings=slow, experiments=[name], consumer="exp-live")
    stop = asyncio.Event()
    task = asyncio.create_task(exporter.run(stop))
    root = settings.data_dir / "export" / name

    async def open_files() -> bool:
        return bool(list(root.rglob("*.inprogress")))

    try:
        await wait_for(open_files)
        assert parquet_files(root) == []
        env = {**os.environ, "BANDITGATE_URL": control.url, "BANDITGATE_ADMIN_KEYS": ADMIN_KEY}
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "banditgate_app.cli", "export", "flush", "--experiment", name],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "closed" in done.stdout and "file(s)" in done.stdout
        assert sum(len(pq.read_table(path)) for path in parquet_files(root)) == 10
        assert not list(root.rglob("*.inprogress"))
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


async def test_export_flush_with_no_exporter(control, name):
    spec = spec_with_arm_features(name).model_dump(mode="json", exclude_none=True)
    assert (await control.call("POST", "/v1/experiments", spec))[0] == 201
    env = {**os.environ, "BANDITGATE_URL": control.url, "BANDITGATE_ADMIN_KEYS": ADMIN_KEY}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "banditgate_app.cli", "export", "flush", "--experiment", name],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "no exporter is running" in done.stdout


async def test_crash_after_commit_is_finished_on_restart(redis, name, clock, settings, monkeypatch):
    await joined_run(redis, name, clock, settings, n=20)
    exporter = Exporter(redis=redis, settings=settings, experiments=[name], consumer="exp-a")

    def crash(moves: Any) -> Any:
        raise Killed("between the commit and the rename")

    monkeypatch.setattr(export_worker, "publish", crash)
    with pytest.raises(Killed):
        await exporter.flush()
    root = settings.data_dir / "export" / name
    assert parquet_files(root) == [] and list(root.rglob("*.inprogress"))
    assert await redis.hlen(keys.export_committed(name)) == 1
    monkeypatch.undo()

    restarted = Exporter(redis=redis, settings=settings, experiments=[name], consumer="exp-b")
    await restarted.flush()
    assert len(pd.read_parquet(root)) == 20  # published once, not exported twice
    assert not list(root.rglob("*.inprogress"))
    assert await redis.hlen(keys.export_committed(name)) == 0


async def test_uncommitted_files_are_dropped_and_rows_exported_again(redis, name, clock, settings):
    await joined_run(redis, name, clock, settings, n=20)
    crashed = Exporter(redis=redis, settings=settings, experiments=[name], consumer="exp-same")
    await crashed.run_once()  # read everything into open files, then "die" without closing
    root = settings.data_dir / "export" / name
    assert list(root.rglob("*.inprogress")) and parquet_files(root) == []
    for file in crashed.open.values():
        file._lines.flush()
    restarted = Exporter(redis=redis, settings=settings, experiments=[name], consumer="exp-same")
    await restarted.flush()
    frame = pd.read_parquet(root)
    assert len(frame) == 20 and frame["event_id"].is_unique
    assert not list(root.rglob("*.inprogress"))
    dsjson = [
        line for p in (root / "_dsjson").rglob("*.json") for line in p.read_text().splitlines()
    ]
    assert len(dsjson) == 20
    for file in crashed.open.values():
        file.discard()


async def test_closed_files_are_uploaded_to_s3(redis, name, clock, settings, monkeypatch):
    from moto.server import ThreadedMotoServer

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket="exports")
        await joined_run(redis, name, clock, settings, n=10)
        uploading = settings.model_copy(
            update={
                "export_s3_url": "s3://exports/banditgate",
                "export_s3_endpoint_url": endpoint,
                "export_s3_region": "us-east-1",
            }
        )
        await Exporter(
            redis=redis, settings=uploading, experiments=[name], consumer="exp-s3"
        ).flush()
        listed = s3.list_objects_v2(Bucket="exports", Prefix=f"banditgate/{name}/")
        object_keys = sorted(item["Key"] for item in listed.get("Contents", []))
        parquet_keys = [k for k in object_keys if k.endswith(".parquet")]
        assert (
            len(parquet_keys) == 1 and "/date=" in parquet_keys[0] and "/hour=" in parquet_keys[0]
        )
        assert any(
            k.startswith(f"banditgate/{name}/_dsjson/") and k.endswith(".json") for k in object_keys
        )
        body = s3.get_object(Bucket="exports", Key=parquet_keys[0])["Body"].read()
        local = parquet_files(settings.data_dir / "export" / name)[0]
        assert body == local.read_bytes()
        # A restart does not upload again what is already there.
        again = Exporter(redis=redis, settings=uploading, experiments=[name], consumer="exp-s3")
        assert again.uploader is not None and again.uploader.missing() == []
    finally:
        server.stop()
