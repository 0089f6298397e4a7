"""Under `banditgate serve`, one endpoint_url serves boto3's sagemaker and sagemaker-runtime."""

from __future__ import annotations

import asyncio

import boto3
import pytest
from botocore.config import Config

from banditgate.redis import Redis
from banditgate.store import ExperimentStore
from banditgate_app.apps import serve_app
from tests.experiments.conftest import ADMIN_KEY
from tests.support import make_spec, run_backend, serve_asgi, wait_for


async def test_boto3_control_and_runtime_clients_on_one_port(
    redis: Redis, redis_url: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BANDITGATE_REDIS_URL", redis_url)
    monkeypatch.setenv("BANDITGATE_ADMIN_KEYS", ADMIN_KEY)
    monkeypatch.setenv("BANDITGATE_EXPERIMENTS", name)
    async with run_backend() as one, run_backend() as two:
        await ExperimentStore(redis).put(
            make_spec(name, [("a", one.url), ("b", two.url)], mode="ab")
        )
        async with serve_asgi(serve_app(with_ingest=False)) as url:
            options = {
                "endpoint_url": url,
                "region_name": "us-east-1",
                "aws_access_key_id": "banditgate",
                "aws_secret_access_key": ADMIN_KEY,
                "config": Config(retries={"max_attempts": 1}),
            }
            control = boto3.client("sagemaker", **options)
            runtime = boto3.client("sagemaker-runtime", **options)
            await asyncio.to_thread(
                control.update_endpoint_weights_and_capacities,
                EndpointName=name,
                DesiredWeightsAndCapacities=[{"VariantName": "a", "DesiredWeight": 0.0}],
            )
            described = await asyncio.to_thread(control.describe_endpoint, EndpointName=name)
            assert [
                (v["VariantName"], v["CurrentWeight"]) for v in described["ProductionVariants"]
            ] == [
                ("a", 0.0),
                ("b", 1.0),
            ]

            async def only_b() -> bool:
                response = await asyncio.to_thread(
                    runtime.invoke_endpoint, EndpointName=name, Body=b'{"features": ["x"]}'
                )
                return response["InvokedProductionVariant"] == "b"

            await wait_for(only_b)  # the router picked the new weights up
            for _ in range(10):
                assert await only_b()
