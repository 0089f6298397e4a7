"""Publishing a model through the API, and asking the exporters to flush."""

from __future__ import annotations

import asyncio
import base64
import contextlib

from banditgate.export_flush import listen_for_flush, reply
from banditgate.policy import BetaCounts, new_workspace, workspace_to_bytes
from banditgate.redis import Redis
from banditgate.registry import PolicyRegistry
from banditgate.spec import parse_spec
from tests.experiments.conftest import Control, spec_doc


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def vw_model(name: str) -> bytes:
    spec = parse_spec(spec_doc(name))
    return workspace_to_bytes(new_workspace(spec.policy, save_resume=True))


async def test_publish_validates_stores_and_serves(control: Control, name: str, redis: Redis):
    await control.call("POST", "/v1/experiments", spec_doc(name))
    path = f"/v1/experiments/{name}/policies"
    body = {"model": b64(vw_model(name)), "note": "by hand", "ope": {"candidate": {"dr": {}}}}
    status, published = await control.call("POST", path, body)
    assert status == 201, published
    assert published["current"] == 1
    version = published["version"]
    assert (version["version"], version["source"], version["note"]) == (1, "manual", "by hand")
    assert (version["learner"], version["arms"], version["parent"]) == ("vw", ["a", "b"], None)

    status, second = await control.call(
        "POST", path, {"model": b64(vw_model(name)), "source": "warmstart", "activate": False}
    )
    assert status == 201, second
    assert second["current"] == 1  # stored, not served
    assert (second["version"]["version"], second["version"]["parent"]) == (2, 1)
    listed = await control.get(path)
    assert [v["version"] for v in listed["versions"]] == [1, 2] and listed["current"] == 1
    assert await PolicyRegistry(redis).model(name, 2) == vw_model(name)


async def test_publish_refuses_bad_models_and_writes_nothing(control: Control, name: str):
    await control.call("POST", "/v1/experiments", spec_doc(name))
    path = f"/v1/experiments/{name}/policies"
    cases = [
        ({"model": b64(b"\x00not a model")}, 422, "InvalidPolicy", "not a loadable VW model"),
        ({"model": b64(BetaCounts().to_bytes())}, 422, "InvalidPolicy", "VW model"),
        ({"model": "%%% not base64"}, 422, "InvalidInput", "model: not valid base64"),
        ({"model": b64(b"x"), "source": "Bad Source"}, 422, "InvalidInput", "source"),
        ({"note": "no model"}, 422, "InvalidInput", "model"),
    ]
    for body, status, kind, message in cases:
        got, error = await control.call("POST", path, body)
        assert got == status, (body, error)
        assert error["error"]["type"] == kind and message in error["error"]["message"], error
    assert (await control.get(path))["versions"] == []

    status, error = await control.call("POST", path, {"model": b64(vw_model(name))}, key=None)
    assert status == 401
    status, error = await control.call(
        "POST", "/v1/experiments/no-such-experiment/policies", {"model": b64(vw_model(name))}
    )
    assert status == 404 and error["error"]["type"] == "UnknownExperiment"


async def test_export_flush_asks_the_exporters_and_reports_their_answers(
    control: Control, name: str, redis: Redis
):
    await control.call("POST", "/v1/experiments", spec_doc(name))
    body = {"experiment": name, "timeout_s": 1}  # nothing joined: nothing to wait for
    status, outcome = await control.call("POST", "/v1/export/flush", body)
    assert status == 200
    assert outcome == {
        "exporters": 0,
        "answered": 0,
        "files": 0,
        "complete": True,
        "unexported": 0,
        "replies": [],
    }

    requests: asyncio.Queue = asyncio.Queue()  # type: ignore[type-arg]
    ready = asyncio.Event()
    listener = asyncio.create_task(listen_for_flush(redis, requests, ready))

    async def exporter() -> None:
        request = await requests.get()
        assert request["experiment"] == name
        await reply(redis, request["request"], {"files": 3})

    try:
        await asyncio.wait_for(ready.wait(), timeout=10)
        answering = asyncio.create_task(exporter())
        status, outcome = await control.call("POST", "/v1/export/flush", {"experiment": name})
        await answering
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
    assert status == 200, outcome
    assert (outcome["exporters"], outcome["files"], outcome["complete"]) == (1, 3, True)

    status, error = await control.call("POST", "/v1/export/flush", {"experiment": "nope"})
    assert status == 404 and error["error"]["type"] == "UnknownExperiment"
    status, _ = await control.call("POST", "/v1/export/flush", key=None)
    assert status == 401
