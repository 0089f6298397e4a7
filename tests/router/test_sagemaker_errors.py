"""SageMaker Runtime errors as botocore models them: boto3 raises its own exception classes."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
import boto3
import orjson
import pytest
from aiohttp import web
from botocore.config import Config

from banditgate import keys
from banditgate.registry import PolicyRegistry
from banditgate.store import ExperimentStore
from router import sagemaker
from tests.router.conftest import logged_decisions
from tests.support import Backend, make_spec, run_backend, wait_for


def runtime_client(url: str, retries: dict[str, Any] | None = None) -> Any:
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries=retries or {"max_attempts": 1}),
    )


def closed_port_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


async def invoke_error(client: Any, expected: type[Exception], **kwargs: Any) -> Any:
    kwargs.setdefault("Body", b'{"features": ["fine"]}')
    kwargs.setdefault("ContentType", "application/json")
    with pytest.raises(expected) as caught:
        await asyncio.to_thread(client.invoke_endpoint, **kwargs)
    return caught.value


async def test_validation_errors(start_router, name):
    async with run_backend() as one:
        url, _ = await start_router(make_spec(name, [("bert-1", one.url)]), max_body_bytes=1024)
        client = runtime_client(url)
        validation = client.exceptions.ValidationError

        error = await invoke_error(client, validation, EndpointName="nope")
        assert str(error) == (
            "An error occurred (ValidationError) when calling the InvokeEndpoint operation: "
            "Endpoint nope not found."
        )
        assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 400

        error = await invoke_error(client, validation, EndpointName=name, Body=b'{"features": [')
        assert "not valid JSON" in error.response["Error"]["Message"]

        error = await invoke_error(client, validation, EndpointName=name, TargetVariant="ghost")
        assert "unknown target variant 'ghost'" in error.response["Error"]["Message"]

        error = await invoke_error(client, validation, EndpointName=name, Body=b"x" * 2000)
        assert "exceeds 1024 bytes" in error.response["Error"]["Message"]

        error = await invoke_error(client, validation, EndpointName=name, InferenceId="x" * 300)
        assert "X-Amzn-SageMaker-Inference-Id" in error.response["Error"]["Message"]
    assert one.requests == []


async def test_model_errors_quote_the_arm(start_router, redis, name):
    async def refuse(request: web.Request, body: bytes) -> web.StreamResponse:
        return web.Response(status=400, text="field 'inputs' is required")

    async def crash(request: web.Request, body: bytes) -> web.StreamResponse:
        return web.Response(status=500, text="CUDA out of memory")

    async with (
        run_backend(Backend(reply=refuse)) as picky,
        run_backend(Backend(reply=crash)) as broken,
        run_backend(Backend(delay_s=2.0)) as slow,
    ):
        spec = make_spec(
            name,
            [
                ("picky", picky.url),
                ("broken", broken.url),
                ("slow", slow.url),
                ("down", closed_port_url()),
            ],
        )
        url, _ = await start_router(spec, backend_timeout_s=0.3)
        client = runtime_client(url)
        model_error = client.exceptions.ModelError

        error = await invoke_error(client, model_error, EndpointName=name, TargetVariant="picky")
        assert str(error) == (
            "An error occurred (ModelError) when calling the InvokeEndpoint operation: "
            "Received client error (400) from picky with message \"field 'inputs' is required\"."
        )
        assert error.response["OriginalStatusCode"] == 400
        assert error.response["OriginalMessage"] == "field 'inputs' is required"
        assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 424
        headers = error.response["ResponseMetadata"]["HTTPHeaders"]
        assert headers["x-banditgate-variant"] == "picky"
        picky_event = headers["x-banditgate-event-id"]

        error = await invoke_error(client, model_error, EndpointName=name, TargetVariant="broken")
        assert error.response["OriginalStatusCode"] == 500
        assert error.response["OriginalMessage"] == "CUDA out of memory"
        assert error.response["Error"]["Message"].startswith("Received server error (500)")

        error = await invoke_error(client, model_error, EndpointName=name, TargetVariant="slow")
        assert error.response["Error"]["Message"].startswith(
            "Your invocation timed out while waiting for a response from slow"
        )
        assert "OriginalStatusCode" not in error.response

        error = await invoke_error(client, model_error, EndpointName=name, TargetVariant="down")
        assert "arm 'down' unreachable: cannot connect" in error.response["Error"]["Message"]

    await wait_for(lambda: _count(redis, name, 4))
    decisions = {d["chosen"]: d for d in await logged_decisions(redis, name)}
    assert len(decisions) == 4
    assert decisions["picky"]["status"] == 400 and decisions["picky"]["event_id"] == picky_event
    assert decisions["broken"]["status"] == 500
    assert decisions["slow"]["status"] == 504 and "did not answer" in decisions["slow"]["error"]
    assert decisions["down"]["status"] == 502


async def test_model_not_ready_when_the_policy_cannot_load(start_router, redis, name):
    async with run_backend() as one:
        spec = make_spec(name, [("a", one.url)], policy={"learner": "thompson"})
        await ExperimentStore(redis).put(spec)
        await PolicyRegistry(redis).publish(
            name, b'{"alpha": {"a": 5}, "beta": {"a": 2}}', learner="thompson"
        )
        await redis.delete(keys.policy_model(name, 1))  # the model blob is lost
        url, app = await start_router(spec)
        assert app.runtime is not None and name not in app.runtime.experiments
        client = runtime_client(url)
        error = await invoke_error(
            client, client.exceptions.ModelNotReadyException, EndpointName=name
        )
    assert "policy is not loaded" in error.response["Error"]["Message"]
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert one.requests == []


def test_service_unavailable_parses_as_botocores_class():
    # No arm can answer (every arm out): the bytes the router sends, through botocore's parser.
    from botocore.parsers import create_parser

    from banditgate.errors import NoHealthyArm

    error = sagemaker.from_error(NoHealthyArm("no arm of 'reviews' can answer"))
    client = runtime_client("http://127.0.0.1:1")
    model = client.meta.service_model.operation_model("InvokeEndpoint")
    parsed = create_parser("rest-json").parse(
        {
            "status_code": error.status,
            "headers": dict((k.decode(), v.decode()) for k, v in error.headers("evt-1")),
            "body": error.body(),
        },
        model.output_shape,
    )
    assert parsed["Error"] == {
        "Code": "ServiceUnavailable",
        "Message": "no arm of 'reviews' can answer",
    }
    assert parsed["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert client.exceptions.from_code("ServiceUnavailable") is client.exceptions.ServiceUnavailable


async def test_service_unavailable_when_no_arm_can_answer_and_retries_log_nothing_more(
    start_router, redis, name
):
    url, _ = await start_router(
        make_spec(name, [("a", closed_port_url()), ("b", closed_port_url())])
    )
    single = f"{name}-one"
    single_url, _ = await start_router(make_spec(single, [("only", closed_port_url())]))
    client = runtime_client(url, retries={"mode": "standard", "max_attempts": 3})
    error = await invoke_error(client, client.exceptions.ServiceUnavailable, EndpointName=name)
    assert error.response["Error"]["Message"].startswith("no arm can answer: arm ")
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert error.response["ResponseMetadata"]["RetryAttempts"] > 0  # botocore retried
    await wait_for(lambda: _count(redis, name, 2))
    await asyncio.sleep(0.05)
    decisions = await logged_decisions(redis, name)
    # The client's request: its first arm's failed attempt and the other arm's failure.
    # botocore's retries were answered from that decision and logged nothing more.
    assert sorted(d["chosen"] for d in decisions) == ["a", "b"]
    assert len({d["event_id"].removesuffix("~1") for d in decisions}) == 1

    client = runtime_client(single_url)
    error = await invoke_error(client, client.exceptions.ServiceUnavailable, EndpointName=single)
    assert "arm 'only' unreachable" in error.response["Error"]["Message"]


async def test_a_router_fault_is_internal_failure(start_router, name):
    async with run_backend() as one:
        url, app = await start_router(make_spec(name, [("a", one.url)]))
        client = runtime_client(url)
        assert app.router is not None
        # An inconsistent state (a bug): botocore's InternalFailure, never a traceback.
        app.router.runtime.get(name).arms.clear()
        error = await invoke_error(client, client.exceptions.InternalFailure, EndpointName=name)
    assert error.response["Error"]["Message"] == (
        "the router failed to handle the request; see its log"
    )
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 500


async def test_a_retry_is_answered_from_its_first_decision(start_router, redis, name):
    async with run_backend(Backend(label=1)) as one, run_backend(Backend(label=2)) as two:
        url, _ = await start_router(make_spec(name, [("a", one.url), ("b", two.url)]))
        invoke = f"{url}/endpoints/{name}/invocations"
        async with aiohttp.ClientSession() as http:
            seen: list[tuple[str, str]] = []
            for attempt in range(3):
                for request in range(10):
                    headers = {
                        "content-type": "application/json",
                        "amz-sdk-invocation-id": f"sdk-{request}",
                        "amz-sdk-request": f"attempt={attempt + 1}; max=3",
                    }
                    async with http.post(invoke, data=b'{"features": ["x"]}', headers=headers) as r:
                        assert r.status == 200
                        seen.append(
                            (r.headers["x-banditgate-event-id"], r.headers["x-banditgate-variant"])
                        )
            # The client's own event id: same rule.
            for _ in range(3):
                headers = {"content-type": "application/json", "x-banditgate-event-id": "evt-7"}
                async with http.post(invoke, data=b'{"features": ["x"]}', headers=headers) as r:
                    seen.append(("evt-7", r.headers["x-banditgate-variant"]))
    # Each attempt got its request's first decision: same event id, same arm.
    assert seen[0:10] == seen[10:20] == seen[20:30]
    assert len({event for event, _ in seen[:10]}) == 10
    assert len(set(seen[30:])) == 1
    assert len(one.requests) + len(two.requests) == 33
    await wait_for(lambda: _count(redis, name, 11))
    await asyncio.sleep(0.05)  # a second logging of a retry would land in this window
    decisions = await logged_decisions(redis, name)
    assert len(decisions) == 11
    assert sorted(d["event_id"] for d in decisions) == sorted(
        {event for event, _ in seen[:10]} | {"evt-7"}
    )


async def test_boto3_default_retries_with_an_arm_down_log_one_decision_per_call(
    start_router, redis, name
):
    async with run_backend() as up:
        url, _ = await start_router(make_spec(name, [("up", up.url), ("down", closed_port_url())]))
        # botocore's defaults: standard mode, 3 attempts, retries 500/502/503/504.
        client = boto3.client(
            "sagemaker-runtime",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

        def call(i: int) -> tuple[str, int]:
            response = client.invoke_endpoint(
                EndpointName=name, Body=b'{"features": ["x"]}', ContentType="application/json"
            )
            retries = response["ResponseMetadata"]["RetryAttempts"]
            return str(response["InvokedProductionVariant"]), retries

        answers = [await asyncio.to_thread(call, i) for i in range(20)]
    # The router sends a request that could not reach "down" to "up" itself: no client retries.
    assert answers == [("up", 0)] * 20
    assert len(up.requests) == 20
    await wait_for(lambda: _count(redis, name, 20))
    await asyncio.sleep(0.05)
    decisions = await logged_decisions(redis, name)
    failed_attempts = {d["retry_of"] for d in decisions if "retry_of" in d}
    answered = [d for d in decisions if d["event_id"] not in failed_attempts]
    # One decision per client call; the attempts that never reached "down" are logged apart.
    assert len(answered) == 20
    assert {d["chosen"] for d in answered} == {"up"}
    assert all(d["chosen"] == "down" for d in decisions if d["event_id"] in failed_attempts)


async def test_the_error_body_is_sagemakers(start_router, name):
    async with run_backend(Backend(status=503)) as broken:
        url, _ = await start_router(make_spec(name, [("a", broken.url)]))
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{url}/endpoints/{name}/invocations",
                data=b'{"features": ["x"]}',
                headers={"content-type": "application/json"},
            ) as r,
        ):
            status, body, headers = r.status, orjson.loads(await r.read()), r.headers
    assert status == 424
    assert headers["x-amzn-errortype"] == "ModelError"
    assert headers["x-amzn-requestid"] == headers["x-banditgate-event-id"]
    assert body["ErrorCode"] == "SERVER_ERROR_FROM_MODEL"
    assert body["OriginalStatusCode"] == 503
    assert orjson.loads(body["OriginalMessage"]) == {"predicted_label": 3, "path": "/invocations"}


async def _count(redis, name, n):  # type: ignore[no-untyped-def]
    return len(await logged_decisions(redis, name)) >= n
