"""Arms point only where BANDITGATE_ARM_HOSTS allows; their credentials are never shown back."""

from __future__ import annotations

import aiohttp
import pytest
from pydantic import SecretStr

from banditgate.arm_hosts import ArmHosts, redact_url
from experiments.app import create_control_app
from experiments.settings import ControlSettings
from tests.experiments.conftest import spec_doc
from tests.support import ADMIN_KEY, Control, serve_asgi


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data",
        "http://[fe80::1]:8080",
        "http://[::ffff:169.254.169.254]",
        "http://2852039166/",  # 169.254.169.254 as one number
        "http://0xa9.0xfe.0xa9.0xfe/",
        "http://metadata.google.internal/computeMetadata/v1",
    ],
)
def test_link_local_and_metadata_hosts_are_refused_by_default(url: str) -> None:
    problem = ArmHosts.parse([]).refusal(url)
    assert problem is not None and "metadata" in problem


def test_an_allow_list_of_networks_and_names() -> None:
    hosts = ArmHosts.parse(["10.0.0.0/8", "*.svc.cluster.local", "169.254.169.254/32"])
    assert hosts.refusal("http://10.2.3.4:8080") is None
    assert hosts.refusal("http://bert.models.svc.cluster.local") is None
    assert hosts.refusal("http://169.254.169.254") is None  # listed itself
    assert hosts.refusal("http://11.0.0.1") == "host 11.0.0.1 is not in BANDITGATE_ARM_HOSTS"
    assert hosts.refusal("http://example.com") == "host example.com is not in BANDITGATE_ARM_HOSTS"
    # A broad network does not open link-local addresses.
    assert ArmHosts.parse(["0.0.0.0/0"]).refusal("http://169.254.1.1") is not None
    with pytest.raises(ValueError, match="neither a CIDR nor a host pattern"):
        ArmHosts.parse(["http://x"])


def test_redaction() -> None:
    assert redact_url("http://user:pw@host:81/p?q=@") == "http://user:***@host:81/p?q=@"
    assert redact_url("https://token@host") == "https://***@host"
    assert redact_url("http://host/a@b") == "http://host/a@b"


async def test_the_api_refuses_arms_outside_the_list_and_hides_credentials(
    redis_url: str, name: str
) -> None:
    settings = ControlSettings(
        redis_url=redis_url, admin_keys=[SecretStr(ADMIN_KEY)], arm_hosts=["127.0.0.0/8"]
    )
    async with serve_asgi(create_control_app(settings)) as url, aiohttp.ClientSession() as http:
        control = Control(url, http, None)
        doc = spec_doc(name)
        doc["arms"][0]["url"] = "http://169.254.169.254/latest"
        status, body = await control.call("POST", "/v1/experiments", doc)
        assert status == 422
        assert body["error"]["field"] == "arms[0].url"
        assert "link-local or cloud metadata" in body["error"]["message"]
        doc["arms"][0]["url"] = "http://10.0.0.5:9000"
        status, body = await control.call("POST", "/v1/experiments", doc)
        assert status == 422 and "not in BANDITGATE_ARM_HOSTS" in body["error"]["message"]

        doc["arms"][0]["url"] = "http://bert:s3cret@127.0.0.1:9101"
        status, body = await control.call("POST", "/v1/experiments", doc)
        assert status == 201, body
        assert "s3cret" not in str(body)
        for path in (
            f"/v1/experiments/{name}",
            "/v1/experiments",
            f"/v1/experiments/{name}/versions/1",
        ):
            shown = await control.get(path)
            assert "s3cret" not in str(shown), path
        described = await control.get(f"/v1/experiments/{name}")
        assert described["spec"]["arms"][0]["url"] == "http://bert:***@127.0.0.1:9101"
        # Sending back what was shown is refused rather than storing '***' as the password.
        status, body = await control.call("PUT", f"/v1/experiments/{name}", described["spec"])
        assert status == 422 and "redacted" in body["error"]["message"]
        status, body = await control.call(
            "POST", f"/v1/experiments/{name}/arms", {"name": "c", "url": "http://169.254.1.1"}
        )
        assert status == 422 and body["error"]["field"] == "body.url"
