"""The SageMaker Runtime InvokeEndpoint surface, driven by boto3 itself."""

from __future__ import annotations

import asyncio

import boto3
import orjson
from botocore.config import Config

from tests.router.conftest import logged_decisions
from tests.support import Backend, make_spec, run_backend, wait_for


def sagemaker_client(url: str):  # type: ignore[no-untyped-def]
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 1}),
    )


async def test_boto3_invoke_endpoint_unchanged(start_router, redis, name):
    async with run_backend(Backend(label=4)) as one, run_backend(Backend(label=2)) as two:
        url, _ = await start_router(make_spec(name, [("bert-1", one.url), ("bert-2", two.url)]))
        client = sagemaker_client(url)
        body = orjson.dumps({"features": ["A great phone, I love it!"]})

        def call():  # type: ignore[no-untyped-def]
            return client.invoke_endpoint(
                EndpointName=name,
                Body=body,
                ContentType="application/json",
                Accept="application/json",
                CustomAttributes="trace=abc",
                InferenceId="evt-0001",
                TargetModel="model-a.tar.gz",
                TargetContainerHostname="container-2",
                EnableExplanations="`true`",
            )

        response = await asyncio.to_thread(call)
        variant = response["InvokedProductionVariant"]
        payload = orjson.loads(response["Body"].read())
        headers = response["ResponseMetadata"]["HTTPHeaders"]

    assert variant in ("bert-1", "bert-2")
    assert payload["predicted_label"] == (4 if variant == "bert-1" else 2)
    assert response["ContentType"] == "application/json"
    assert response["CustomAttributes"] == "echo:trace=abc"
    assert headers["x-banditgate-event-id"] == "evt-0001"
    assert headers["x-banditgate-variant"] == variant
    backend_seen = (one if variant == "bert-1" else two).requests[-1]
    assert backend_seen["path"] == "/invocations"
    assert backend_seen["headers"]["x-amzn-sagemaker-custom-attributes"] == "trace=abc"
    assert backend_seen["headers"]["x-amzn-sagemaker-target-model"] == "model-a.tar.gz"
    assert backend_seen["headers"]["x-amzn-sagemaker-target-container-hostname"] == "container-2"
    assert backend_seen["headers"]["x-amzn-sagemaker-enable-explanations"] == "`true`"
    assert backend_seen["body"] == body

    await wait_for(lambda: _count(redis, name, 1))
    (decision,) = await logged_decisions(redis, name)
    assert decision["event_id"] == "evt-0001"
    assert decision["chosen"] == variant
    assert decision["forced"] is False
    assert decision["arms"] == ["bert-1", "bert-2"]
    assert abs(sum(decision["pmf"]) - 1) < 1e-6
    assert decision["policy_version"] == 0
    assert decision["status"] == 200
    assert decision["context"]["t.len"] == "15"
    assert decision["context"]["t.pos"] == "1+"


async def test_target_variant_pins_the_arm_with_probability_one(start_router, redis, name):
    async with run_backend() as one, run_backend() as two:
        url, _ = await start_router(make_spec(name, [("bert-1", one.url), ("bert-2", two.url)]))
        client = sagemaker_client(url)

        def call():  # type: ignore[no-untyped-def]
            return client.invoke_endpoint(
                EndpointName=name,
                Body=b'{"features": ["ok"]}',
                ContentType="application/json",
                TargetVariant="bert-2",
            )

        responses = await asyncio.gather(*(asyncio.to_thread(call) for _ in range(10)))
    assert {r["InvokedProductionVariant"] for r in responses} == {"bert-2"}
    assert len(one.requests) == 0 and len(two.requests) == 10
    await wait_for(lambda: _count(redis, name, 10))
    for decision in await logged_decisions(redis, name):
        assert decision["forced"] is True
        assert decision["chosen"] == "bert-2"
        assert decision["pmf"] == [0.0, 1.0]


async def test_unknown_target_variant_is_400_through_boto3(start_router, name):
    async with run_backend() as one:
        url, _ = await start_router(make_spec(name, [("bert-1", one.url)]))
        client = sagemaker_client(url)

        def call():  # type: ignore[no-untyped-def]
            return client.invoke_endpoint(
                EndpointName=name, Body=b"{}", ContentType="application/json", TargetVariant="nope"
            )

        try:
            await asyncio.to_thread(call)
        except client.exceptions.ClientError as exc:
            error = exc.response
        else:
            raise AssertionError("expected a client error")
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert error["Error"]["Code"] == "ValidationError"
    assert "unknown target variant 'nope'" in error["Error"]["Message"]


async def _count(redis, name, n):  # type: ignore[no-untyped-def]
    return len(await logged_decisions(redis, name)) >= n
