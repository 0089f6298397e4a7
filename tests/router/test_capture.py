"""Data capture: sampled requests and responses per arm, as SageMaker-shaped JSON lines."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import orjson
import pytest

from banditgate.spec import parse_spec
from router.capture import Captured, CapturePlan, DataCapture, capture_fraction
from tests.router.conftest import logged_decisions
from tests.router.test_metrics import metric_values
from tests.support import Backend, make_spec, run_backend, wait_for
from tests.traffic import invoke_many


def records(root: Path) -> list[dict[str, Any]]:
    return [
        orjson.loads(line)
        for path in sorted((root / "capture").rglob("*.jsonl"))
        for line in path.read_bytes().splitlines()
        if line
    ]


def capture_spec(name: str, a: str, b: str, **capture: Any):  # type: ignore[no-untyped-def]
    return make_spec(
        name, [("a", a), ("b", b)], capture={"sample_percent": 100, **capture}, mode="ab"
    )


async def test_every_sampled_request_is_captured_with_its_answer(
    start_router, redis, name, tmp_path
):
    async with run_backend(Backend(label=1)) as a, run_backend(Backend(label=2)) as b:
        url, app = await start_router(capture_spec(name, a.url, b.url), data_dir=tmp_path)
        ids = [f"cap-{i}" for i in range(30)]
        replies = await invoke_many(url, name, ids, body={"features": ["great phone"]})
        assert {r.status for r in replies} == {200}
        await wait_for(lambda: _written(app, 30))

    captured = records(tmp_path)
    assert sorted(r["eventMetadata"]["eventId"] for r in captured) == sorted(ids)
    decisions = {d["event_id"]: d for d in await logged_decisions(redis, name)}
    for r in captured:
        data = r["captureData"]
        assert data["endpointInput"] == {
            "observedContentType": "application/json",
            "mode": "INPUT",
            "data": '{"features":["great phone"]}',
            "encoding": "JSON",
        }
        output = data["endpointOutput"]
        assert output["mode"] == "OUTPUT" and output["encoding"] == "JSON"
        ours = r["banditgate"]
        decision = decisions[r["eventMetadata"]["eventId"]]
        assert ours["arm"] == decision["chosen"] and ours["experiment"] == name
        assert orjson.loads(output["data"])["predicted_label"] == (1 if ours["arm"] == "a" else 2)
        assert ours["status"] == 200 and ours["latencyMs"] > 0
        assert r["eventMetadata"]["inferenceTime"].endswith("Z")
    # Laid out per experiment, arm and hour, as SageMaker does per endpoint and variant.
    for path in (tmp_path / "capture").rglob("*.jsonl"):
        parts = path.relative_to(tmp_path / "capture").parts
        assert parts[0] == name and parts[1] in ("a", "b") and len(parts) == 7
        assert time.strftime("%Y", time.gmtime()) == parts[2]


async def test_only_the_sampled_share_is_captured_and_binary_bodies_are_base64(
    start_router, name, tmp_path
):
    async with run_backend() as a, run_backend() as b:
        spec = capture_spec(name, a.url, b.url, sample_percent=30, max_body_bytes=16)
        url, app = await start_router(spec, data_dir=tmp_path)
        ids = [f"bin-{i}" for i in range(200)]
        payload = bytes(range(40))
        async with aiohttp.ClientSession() as http:
            for event_id in ids:
                async with http.post(
                    f"{url}/endpoints/{name}/invocations",
                    data=payload,
                    headers={
                        "content-type": "application/octet-stream",
                        "x-amzn-sagemaker-inference-id": event_id,
                    },
                ) as response:
                    assert response.status == 200
        expected = {e for e in ids if capture_fraction(e) < 0.3}
        await wait_for(lambda: _written(app, len(expected)))

    captured = records(tmp_path)
    assert {r["eventMetadata"]["eventId"] for r in captured} == expected
    assert 30 <= len(expected) <= 90
    for r in captured:
        request = r["captureData"]["endpointInput"]
        assert request["encoding"] == "BASE64"
        assert request["observedContentType"] == "application/octet-stream"
        assert base64.b64decode(request["data"]) == payload[:16]
        assert request["truncated"] is True


async def test_a_full_buffer_drops_and_counts_and_routing_goes_on(start_router, name, tmp_path):
    async with run_backend() as a, run_backend() as b:
        url, app = await start_router(
            capture_spec(name, a.url, b.url), data_dir=tmp_path, capture_buffer_max=3
        )
        capture = app.capture
        await capture.stop()  # no writer: the buffer fills
        replies = await invoke_many(url, name, [f"full-{i}" for i in range(10)])
        assert {r.status for r in replies} == {200}
        assert capture.stats.captured == 3 and capture.stats.dropped == 7
        async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as response:
            text = await response.text()
        values = metric_values(text, "banditgate_router_capture_records")
        assert values[(("outcome", "dropped"),)] == 7


async def test_a_disk_that_refuses_writes_is_counted_not_fatal(start_router, name, tmp_path):
    blocked = tmp_path / "data"
    blocked.mkdir()
    (blocked / "capture").write_text("a file where the folder should be")
    async with run_backend() as a, run_backend() as b:
        url, app = await start_router(capture_spec(name, a.url, b.url), data_dir=blocked)
        replies = await invoke_many(url, name, [f"disk-{i}" for i in range(5)])
        assert {r.status for r in replies} == {200}

        async def failed() -> bool:
            return app.capture.stats.write_failures >= 5

        await wait_for(failed)
        assert app.capture.stats.written == 0


async def test_closed_files_are_uploaded_to_s3(tmp_path, monkeypatch):
    from moto.server import ThreadedMotoServer

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        plan = CapturePlan(1.0, True, True, 1024, "s3://captures/prod")
        capture = DataCapture(
            tmp_path,
            max_file_bytes=600,  # a few records per file: several rotate and upload
            s3_endpoint_url=endpoint,
            s3_region="us-east-1",
        )
        for i in range(12):
            capture.submit(_captured(f"s3-{i}", plan))
        await capture.flush()  # the bucket does not exist yet: uploads fail, are retried
        assert capture.stats.upload_failures >= 1 and capture.stats.uploads == 0
        s3.create_bucket(Bucket="captures")
        await capture.stop()  # closes the open file; uploads everything still pending
        assert capture.stats.files_closed >= 3
        assert capture.stats.uploads == capture.stats.files_closed
        listed = s3.list_objects_v2(Bucket="captures", Prefix="prod/exp/arm-a/")
        keys = sorted(o["Key"] for o in listed.get("Contents", []))
        assert len(keys) == capture.stats.files_closed
        lines = [
            orjson.loads(line)
            for key in keys
            for line in s3.get_object(Bucket="captures", Key=key)["Body"].read().splitlines()
        ]
        assert sorted(r["eventMetadata"]["eventId"] for r in lines) == sorted(
            f"s3-{i}" for i in range(12)
        )
    finally:
        server.stop()


def _captured(event_id: str, plan: CapturePlan) -> Captured:
    return Captured(
        experiment="exp",
        arm="arm-a",
        event_id=event_id,
        ts=time.time(),
        policy_version=3,
        status=200,
        latency_ms=1.5,
        request=b'{"features": ["x"]}',
        request_type="application/json",
        response=b"1,0.3\n",
        response_type="text/csv",
        plan=plan,
    )


@pytest.mark.parametrize(
    ("capture", "field"),
    [
        ({"sample_percent": 101}, "capture.sample_percent"),
        ({"s3_url": "https://bucket"}, "capture.s3_url"),
        ({"max_body_bytes": 0}, "capture.max_body_bytes"),
        ({"sample": 5}, "capture.sample"),
    ],
)
def test_a_bad_capture_section_is_refused_with_its_field(capture, field):
    from banditgate.errors import InvalidSpec

    with pytest.raises(InvalidSpec) as raised:
        parse_spec(
            {"name": "x", "arms": [{"name": "a", "url": "http://127.0.0.1:9"}], "capture": capture}
        )
    assert raised.value.field == field


async def _written(app: Any, n: int) -> bool:
    return bool(app.capture.stats.written >= n)
