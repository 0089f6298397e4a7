"""SageMaker's control plane (AWS JSON 1.1), driven by boto3's own `sagemaker` client."""

from __future__ import annotations

import asyncio
from typing import Any

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from banditgate.store import ExperimentStore
from tests.support import ADMIN_KEY, make_spec


def sagemaker(url: str, secret: str | None = ADMIN_KEY) -> Any:
    config = Config(retries={"max_attempts": 1})
    if secret is None:
        config = config.merge(Config(signature_version=UNSIGNED))
    return boto3.client(
        "sagemaker",
        endpoint_url=url,
        region_name="eu-west-1",
        aws_access_key_id="banditgate",
        aws_secret_access_key=secret or "unused",
        config=config,
    )


async def call(client: Any, operation: str, **kwargs: Any) -> Any:
    return await asyncio.to_thread(getattr(client, operation), **kwargs)


async def failure(client: Any, operation: str, **kwargs: Any) -> dict[str, Any]:
    with pytest.raises(ClientError) as caught:
        await call(client, operation, **kwargs)
    return caught.value.response


def weights(described: dict[str, Any]) -> dict[str, tuple[float, int]]:
    return {
        v["VariantName"]: (v["CurrentWeight"], v["CurrentInstanceCount"])
        for v in described["ProductionVariants"]
    }


async def test_boto3_describes_lists_and_updates_weights(control, redis, name):
    spec = make_spec(
        name,
        [("a", "http://127.0.0.1:9"), ("b", "http://127.0.0.1:9"), ("c", "http://127.0.0.1:9")],
        mode="ab",
    )
    await ExperimentStore(redis).put(spec)
    client = sagemaker(control.url)

    listed = await call(client, "list_endpoints", NameContains=name)
    assert [e["EndpointName"] for e in listed["Endpoints"]] == [name]
    assert listed["Endpoints"][0]["EndpointStatus"] == "InService"
    assert listed["Endpoints"][0]["EndpointArn"] == (
        f"arn:aws:sagemaker:eu-west-1:000000000000:endpoint/{name}"
    )

    described = await call(client, "describe_endpoint", EndpointName=name)
    assert described["EndpointConfigName"] == name
    assert weights(described) == {"a": (1.0, 1), "b": (1.0, 1), "c": (1.0, 1)}

    # SageMaker semantics: only the listed variant changes.
    updated = await call(
        client,
        "update_endpoint_weights_and_capacities",
        EndpointName=name,
        DesiredWeightsAndCapacities=[
            {"VariantName": "b", "DesiredWeight": 0.0, "DesiredInstanceCount": 3}
        ],
    )
    assert updated["EndpointArn"].endswith(f":endpoint/{name}")
    described = await call(client, "describe_endpoint", EndpointName=name)
    assert weights(described) == {"a": (1.0, 1), "b": (0.0, 3), "c": (1.0, 1)}
    status, view = await control.call("GET", f"/v1/experiments/{name}/rollout")
    assert (status, view["weights"]) == (200, {"a": 50.0, "b": 0.0, "c": 50.0})

    await call(
        client,
        "update_endpoint_weights_and_capacities",
        EndpointName=name,
        DesiredWeightsAndCapacities=[{"VariantName": "c", "DesiredWeight": 3.0}],
    )
    described = await call(client, "describe_endpoint", EndpointName=name)
    assert weights(described) == {"a": (1.0, 1), "b": (0.0, 3), "c": (3.0, 1)}
    status, view = await control.call("GET", f"/v1/experiments/{name}/rollout")
    assert view["weights"] == {"a": 25.0, "b": 0.0, "c": 75.0}

    config = await call(client, "describe_endpoint_config", EndpointConfigName=name)
    assert [
        (v["VariantName"], v["InitialVariantWeight"]) for v in config["ProductionVariants"]
    ] == [
        ("a", 1.0),
        ("b", 1.0),
        ("c", 1.0),
    ]


async def test_bad_calls_answer_in_aws_shapes_and_writes_need_the_key(control, redis, name):
    await ExperimentStore(redis).put(
        make_spec(name, [("a", "http://127.0.0.1:9"), ("b", "http://127.0.0.1:9")], mode="ab")
    )
    client = sagemaker(control.url)
    error = await failure(client, "describe_endpoint", EndpointName="nope")
    assert error["Error"]["Code"] == "ValidationException"
    assert error["Error"]["Message"] == (
        'Could not find endpoint "arn:aws:sagemaker:eu-west-1:000000000000:endpoint/nope".'
    )

    error = await failure(
        client,
        "update_endpoint_weights_and_capacities",
        EndpointName=name,
        DesiredWeightsAndCapacities=[{"VariantName": "ghost", "DesiredWeight": 1.0}],
    )
    assert error["Error"]["Code"] == "ValidationException"
    assert "unknown variant 'ghost'" in error["Error"]["Message"]

    update = {
        "EndpointName": name,
        "DesiredWeightsAndCapacities": [{"VariantName": "a", "DesiredWeight": 0.0}],
    }
    wrong = sagemaker(control.url, secret="not-the-key")
    error = await failure(wrong, "update_endpoint_weights_and_capacities", **update)
    assert error["Error"]["Code"] == "InvalidSignatureException"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 403
    unsigned = sagemaker(control.url, secret=None)
    error = await failure(unsigned, "update_endpoint_weights_and_capacities", **update)
    assert error["Error"]["Code"] == "MissingAuthenticationTokenException"
    # Reads are open, as on the rest of the control plane.
    assert (await call(unsigned, "describe_endpoint", EndpointName=name))["EndpointName"] == name
    assert await ExperimentStore(redis).get_override(name) is None  # nothing was written

    # A negative weight (botocore checks it client-side; the server does too).
    status, body = await control.call(
        "POST",
        "/",
        update | {"DesiredWeightsAndCapacities": [{"VariantName": "a", "DesiredWeight": -1}]},
        headers={"x-amz-target": "SageMaker.UpdateEndpointWeightsAndCapacities"},
    )
    assert status == 400 and body["__type"] == "ValidationException"
    assert "greater than or equal to 0" in body["message"]

    status, body = await control.call(
        "POST", "/", {}, headers={"x-amz-target": "SageMaker.DeleteEndpoint"}
    )
    assert status == 400 and body["__type"] == "UnknownOperationException"
    assert "SageMaker.DescribeEndpoint" in body["message"]


async def test_put_weights_takes_sagemakers_body_and_keeps_unlisted_variants(control, redis, name):
    await ExperimentStore(redis).put(
        make_spec(
            name,
            [("a", "http://127.0.0.1:9"), ("b", "http://127.0.0.1:9"), ("c", "http://127.0.0.1:9")],
            mode="ab",
        )
    )
    path = f"/v1/experiments/{name}/weights"
    status, view = await control.call("PUT", path, [{"variant": "a", "weight": 2}])
    assert (status, view["weights"]) == (200, {"a": 50.0, "b": 25.0, "c": 25.0})
    status, view = await control.call(
        "PUT",
        path,
        {
            "EndpointName": name,
            "DesiredWeightsAndCapacities": [
                {"VariantName": "c", "DesiredWeight": 0, "DesiredInstanceCount": 2}
            ],
        },
    )
    assert (status, view["weights"]) == (200, {"a": 66.666667, "b": 33.333333, "c": 0.0})
    # A pause changes what is served; the next change starts from what is served.
    status, _ = await control.call("DELETE", path)
    assert status == 200
    status, view = await control.call("PUT", path, [{"VariantName": "b", "DesiredWeight": 0}])
    assert view["weights"] == {"a": 50.0, "b": 0.0, "c": 50.0}
