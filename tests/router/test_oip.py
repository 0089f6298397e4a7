"""Open Inference Protocol through the router, driven by tritonclient against Triton-like arms."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from banditgate.spec import parse_spec
from tests.router.conftest import logged_decisions
from tests.router.triton_backend import TritonBackend, run_triton
from tests.support import wait_for


def spec_for(name: str, *arms: TritonBackend, **extra: Any) -> Any:
    return parse_spec(
        {
            "name": name,
            "arms": [
                {"name": f"arm-{i}", "url": arm.url, "protocol": "v2", "model": arm.model}
                for i, arm in enumerate(arms)
            ],
            **extra,
        }
    )


class Client:
    """tritonclient's (gevent) HTTP client, kept on the one thread it must live on."""

    def __init__(self, url: str) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.client = self.pool.submit(
            triton.InferenceServerClient, url.removeprefix("http://")
        ).result()

    async def __call__(self, method: str, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        bound = getattr(self.client, method)
        return await loop.run_in_executor(self.pool, lambda: bound(*args, **kwargs))

    async def infer(self, model: str, values: list[float], **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.pool, lambda: infer(self.client, model, values, **kwargs)
        )


def client_for(url: str) -> Client:
    return Client(url)


def infer(client: triton.InferenceServerClient, model: str, values: list[float], **kw: Any) -> Any:
    tensor = triton.InferInput("INPUT0", [len(values)], "FP32")
    tensor.set_data_from_numpy(np.asarray(values, dtype=np.float32))  # binary by default
    return client.infer(model, [tensor], **kw)


async def test_tritonclient_binary_tensors_pass_through_untouched(start_router, redis, name):
    async with (
        run_triton(TritonBackend(factor=2.0)) as two,
        run_triton(TritonBackend(factor=3.0)) as three,
    ):
        url, _ = await start_router(spec_for(name, two, three))  # the context reads no body
        client = client_for(url)
        results = [await client.infer(name, [1.0, 2.5, -4.0]) for _ in range(8)]
        versioned = await client.infer(name, [1.0], model_version="1")
    factors = [result.as_numpy("OUTPUT0")[0] / 1.0 for result in results]
    for result, factor in zip(results, factors, strict=True):
        assert factor in (2.0, 3.0)
        assert result.as_numpy("OUTPUT0").tolist() == [1.0 * factor, 2.5 * factor, -4.0 * factor]
    assert factors.count(2.0) == len([r for r in two.requests if "versions" not in r["path"]])
    seen = two.requests + three.requests
    infers = [r for r in seen if r["path"].endswith("/infer")]
    assert len(infers) == 9
    for request in [r for r in infers if "versions" not in r["path"]]:
        length = int(request["headers"]["inference-header-content-length"])
        header = orjson.loads(request["body"][:length])
        assert header["inputs"][0]["parameters"] == {"binary_data_size": 12}
        assert np.frombuffer(request["body"][length:], dtype=np.float32).tolist() == [
            1.0,
            2.5,
            -4.0,
        ]
    assert [r["path"] for r in infers if "versions" in r["path"]] == [
        "/v2/models/doubler/versions/1/infer"
    ]
    assert versioned.as_numpy("OUTPUT0").tolist()[0] in (2.0, 3.0)
    await wait_for(lambda: _count(redis, name, 9))
    assert {d["status"] for d in await logged_decisions(redis, name)} == {200}


async def test_binary_header_is_read_only_when_the_context_reads_the_body(
    start_router, redis, name
):
    async with run_triton() as arm:
        spec = spec_for(name, arm, context={"body": ["parameters.segment"]})
        url, _ = await start_router(spec)
        client = client_for(url)
        result = await client.infer(name, [2.0], parameters={"segment": "gold"}, request_id="req-9")
    assert result.as_numpy("OUTPUT0").tolist() == [4.0]
    assert result.get_response()["id"] == "req-9"
    await wait_for(lambda: _count(redis, name, 1))
    (decision,) = await logged_decisions(redis, name)
    assert decision["context"]["parameters.segment"] == "gold"
    assert decision["event_id"] == "req-9"


async def test_errors_are_oip_shaped_and_tritonclient_prints_them(start_router, name):
    async with run_triton() as arm:
        url, _ = await start_router(spec_for(name, arm))
        client = client_for(url)
        with pytest.raises(InferenceServerException) as caught:
            await client.infer("nope", [1.0])
        assert str(caught.value) == "[404] no experiment named 'nope'"

        async with aiohttp.ClientSession() as http:
            infer_url = f"{url}/v2/models/{name}/infer"
            answers = []
            for headers, body in [
                ({"Inference-Header-Content-Length": "500"}, b'{"inputs": []}'),
                ({"Inference-Header-Content-Length": "ten"}, b'{"inputs": []}'),
                ({"Content-Type": "application/json"}, b'{"inputs": ['),
                ({"X-Amzn-SageMaker-Target-Variant": "ghost"}, b'{"inputs": []}'),
            ]:
                async with http.post(infer_url, data=body, headers=headers) as r:
                    answers.append((r.status, orjson.loads(await r.read())))
            async with http.get(f"{url}/v2/models/{name}/infer") as r:
                answers.append((r.status, orjson.loads(await r.read())))
            async with http.get(f"{url}/v2/nothing/here") as r:
                answers.append((r.status, orjson.loads(await r.read())))
    for _, body in answers:
        assert list(body) == ["error"] and isinstance(body["error"], str), body
    assert [status for status, _ in answers] == [400, 400, 400, 400, 405, 404]
    assert answers[0][1]["error"] == (
        "Inference-Header-Content-Length: 500 is beyond the body's 14 bytes"
    )
    assert "not a number" in answers[1][1]["error"]
    assert "not valid JSON" in answers[2][1]["error"]
    assert "unknown target variant 'ghost'" in answers[3][1]["error"]
    assert arm.requests == []


async def test_server_and_model_metadata_and_readiness(start_router, name):
    async with run_triton(TritonBackend(ready=False)) as first, run_triton() as second:
        url, _ = await start_router(spec_for(name, first, second))
        client = client_for(url)

        assert await client("is_server_live")
        assert await client("is_server_ready")
        server = await client("get_server_metadata")
        assert server["name"] == "banditgate" and "binary_tensor_data" in server["extensions"]

        metadata = await client("get_model_metadata", name)
        assert metadata["name"] == name
        assert metadata["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": [-1]}]
        assert metadata["platform"] == "triton-compatible-test"

        assert await client("is_model_ready", name) is True
        second.ready = False
        assert await client("is_model_ready", name) is False
        assert await client("is_model_ready", name, "1") is False
        first.ready = True
        assert await client("is_model_ready", name, "1") is True
        assert await client("is_model_ready", "nope") is False
    ready_paths = [r["path"] for r in first.requests if r["path"].endswith("/ready")]
    assert "/v2/models/doubler/versions/1/ready" in ready_paths


async def test_model_metadata_without_a_v2_arm_is_a_clear_error(start_router, name):
    from tests.support import make_spec, run_backend

    async with run_backend() as plain:
        url, _ = await start_router(make_spec(name, [("sm", plain.url)]))
        client = client_for(url)
        with pytest.raises(InferenceServerException) as caught:
            await client("get_model_metadata", name)
    assert str(caught.value) == (
        f"[503] no arm of {name!r} answered its model metadata (only v2 arms have it)"
    )


async def _count(redis, name, n):  # type: ignore[no-untyped-def]
    return len(await logged_decisions(redis, name)) >= n
