"""Arms that need credentials: static headers, secrets from the environment, SigV4."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from banditgate.errors import InvalidSpec
from banditgate.spec import parse_spec
from experiments.sigv4 import SignatureError, verify
from tests.router.conftest import logged_decisions
from tests.router.test_sagemaker_errors import runtime_client
from tests.support import Backend, run_backend, wait_for


def spec(name: str, arms: list[dict[str, Any]]) -> Any:
    return parse_spec({"name": name, "arms": arms})


async def post(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            url, data=b'{"x": 1}', headers={"content-type": "application/json", **headers}
        ) as r,
    ):
        return r.status, await r.read()


async def test_arm_headers_env_secrets_and_the_forward_allow_list(
    start_router, redis, name, monkeypatch
):
    monkeypatch.setenv("BG_TEST_ARM_TOKEN", "s3cret-token")
    async with run_backend() as keyed, run_backend() as plain:
        url, _ = await start_router(
            spec(
                name,
                [
                    {
                        "name": "keyed",
                        "url": keyed.url,
                        "protocol": "sagemaker",
                        "headers": {"X-Api-Version": "7"},
                        "auth": {"bearer_env": "BG_TEST_ARM_TOKEN"},
                        "forward_headers": ["Cookie", "X-Tenant"],
                    },
                    {"name": "plain", "url": plain.url, "protocol": "sagemaker"},
                ],
            )
        )
        sent = {"authorization": "Bearer the-clients", "cookie": "session=abc", "x-other": "y"}
        for arm in ("keyed", "plain"):
            status, _ = await post(
                f"{url}/endpoints/{name}/invocations",
                {**sent, "x-amzn-sagemaker-target-variant": arm},
            )
            assert status == 200
    seen_keyed = keyed.requests[0]["headers"]
    assert seen_keyed["authorization"] == "Bearer s3cret-token"  # the arm's, not the client's
    assert seen_keyed["cookie"] == "session=abc"
    assert seen_keyed["x-api-version"] == "7"
    assert "x-other" not in seen_keyed and "x-tenant" not in seen_keyed
    seen_plain = plain.requests[0]["headers"]
    assert not {"authorization", "cookie", "x-api-version"} & set(seen_plain)


async def test_a_missing_secret_is_a_clear_failure_logged_once(start_router, redis, name):
    async with run_backend() as arm:
        url, _ = await start_router(
            spec(
                name,
                [
                    {
                        "name": "keyed",
                        "url": arm.url,
                        "protocol": "sagemaker",
                        "auth": {"bearer_env": "BG_TEST_NOT_SET_ANYWHERE"},
                    }
                ],
            )
        )
        client = runtime_client(url, retries={"mode": "standard", "max_attempts": 3})
        with pytest.raises(client.exceptions.InternalFailure) as caught:
            await asyncio.to_thread(
                client.invoke_endpoint,
                EndpointName=name,
                Body=b"{}",
                ContentType="application/json",
            )
    assert caught.value.response["Error"]["Message"] == (
        "arm 'keyed': auth.bearer_env BG_TEST_NOT_SET_ANYWHERE is not set in the router's "
        "environment"
    )
    assert caught.value.response["ResponseMetadata"]["RetryAttempts"] > 0  # botocore retried
    assert arm.requests == []
    await wait_for(lambda: _count(redis, name, 1))
    await asyncio.sleep(0.05)
    (decision,) = await logged_decisions(redis, name)  # several attempts, one decision
    assert decision["status"] == 500 and "BG_TEST_NOT_SET_ANYWHERE" in decision["error"]


@pytest.mark.parametrize(
    ("arm", "words"),
    [
        ({"headers": {"Host": "evil"}}, "set by the router"),
        ({"headers": {"X-A": "one\r\nX-B: two"}}, "line break"),
        ({"headers": {"bad name": "x"}}, "not a valid header name"),
        ({"forward_headers": ["Content-Length"]}, "set by the router"),
        ({"auth": {"bearer_env": "1-not-a-name"}}, "auth.bearer_env"),
        ({"protocol": "sagemaker-runtime"}, "region: required"),
    ],
)
def test_bad_arm_credentials_are_rejected_with_the_field(arm, words):
    with pytest.raises(InvalidSpec) as caught:
        parse_spec({"name": "x", "arms": [{"name": "a", "url": "http://127.0.0.1:9", **arm}]})
    assert words in str(caught.value)


def test_a_sagemaker_runtime_url_names_its_region():
    parsed = parse_spec(
        {
            "name": "x",
            "arms": [
                {
                    "name": "a",
                    "url": "https://runtime.sagemaker.eu-central-1.amazonaws.com",
                    "protocol": "sagemaker-runtime",
                }
            ],
        }
    )
    assert parsed.arms[0].region is None  # taken from the URL when signing


async def test_sagemaker_runtime_arms_are_signed_with_sigv4(start_router, redis, name, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "arm-secret-key")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    checks: list[str] = []

    async def sagemaker_endpoint(request: web.Request, body: bytes) -> web.StreamResponse:
        """Checks the signature as SageMaker would, with the secret only it and the router know."""
        try:
            region = verify(
                method=request.method,
                path=request.path,
                query=request.query_string,
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
                secrets=[b"arm-secret-key"],
            )
        except SignatureError as exc:
            return web.json_response({"message": exc.message}, status=403)
        checks.append(region)
        return web.json_response(
            {"remote": True}, headers={"X-Amzn-Invoked-Production-Variant": "AllTraffic"}
        )

    async with run_backend(Backend(reply=sagemaker_endpoint)) as remote:
        url, _ = await start_router(
            spec(
                name,
                [
                    {
                        "name": "remote",
                        "url": remote.url,
                        "protocol": "sagemaker-runtime",
                        "model": "prod-endpoint",
                        "region": "eu-west-3",
                    }
                ],
            )
        )
        client = runtime_client(url)
        response = await asyncio.to_thread(
            client.invoke_endpoint,
            EndpointName=name,
            Body=b'{"features": ["hello"]}',
            ContentType="application/json",
            CustomAttributes="trace=1",
        )
    assert response["Body"].read() == b'{"remote": true}'
    assert response["InvokedProductionVariant"] == "remote"
    assert checks == ["eu-west-3"]
    seen = remote.requests[0]
    assert seen["path"] == "/endpoints/prod-endpoint/invocations"
    assert seen["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/eu-west-3/sagemaker/aws4_request" in seen["headers"]["authorization"]
    assert seen["body"] == b'{"features": ["hello"]}'


async def _count(redis, name, n):  # type: ignore[no-untyped-def]
    return len(await logged_decisions(redis, name)) >= n


async def test_a_sagemaker_runtime_arm_in_front_of_motos_sagemaker(
    start_router, redis, name, monkeypatch
):
    from moto.server import ThreadedMotoServer

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "arm-secret-key")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    await asyncio.to_thread(server.start)
    try:
        host, port = server.get_host_and_port()
        moto_url = f"http://{host}:{port}"
        results = {
            "region": "eu-west-3",
            "results": [{"Body": "answer from moto", "ContentType": "text/plain"}],
        }
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{moto_url}/moto-api/static/sagemaker/endpoint-results", json=results) as r,
        ):
            assert r.status == 201
        url, _ = await start_router(
            spec(
                name,
                [
                    {
                        "name": "aws",
                        "url": moto_url,
                        "protocol": "sagemaker-runtime",
                        "model": "prod-endpoint",
                        "region": "eu-west-3",
                    }
                ],
            )
        )
        client = runtime_client(url)
        response = await asyncio.to_thread(
            client.invoke_endpoint, EndpointName=name, Body=b"{}", ContentType="application/json"
        )
    finally:
        await asyncio.to_thread(server.stop)
    assert response["Body"].read() == b"answer from moto"
    assert response["ContentType"] == "text/plain"
    assert response["InvokedProductionVariant"] == "aws"
    await wait_for(lambda: _count(redis, name, 1))
    (decision,) = await logged_decisions(redis, name)
    assert decision["chosen"] == "aws" and decision["status"] == 200
