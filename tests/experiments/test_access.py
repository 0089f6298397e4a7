"""Who may read and change what: read keys, admin keys, keys limited to some experiments."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import aiohttp
import pytest
from pydantic import SecretStr

from experiments.app import create_control_app
from experiments.settings import ControlSettings
from tests.experiments.conftest import spec_doc
from tests.support import Control, serve_asgi

ROOT_KEY = "root-key"
READ_KEY = "read-key"
TEAM_KEY = "team-key"


@pytest.fixture
async def guarded(redis_url: str) -> AsyncIterator[Control]:
    settings = ControlSettings(
        redis_url=redis_url,
        admin_keys=[SecretStr(ROOT_KEY), SecretStr(f"{TEAM_KEY}@team-a-*+shared")],
        read_keys=[SecretStr(READ_KEY)],
    )
    async with serve_asgi(create_control_app(settings)) as url, aiohttp.ClientSession() as http:
        yield Control(url, http, None)


async def test_reads_need_a_read_or_admin_key(guarded: Control, name: str) -> None:
    assert (await guarded.call("POST", "/v1/experiments", spec_doc(name), key=ROOT_KEY))[0] == 201
    for path in (f"/v1/experiments/{name}", "/v1/experiments", "/metrics", f"/dashboard/{name}"):
        status, _ = await guarded.call("GET", path, key=None)
        assert status == 401, path
        status, _ = await guarded.call("GET", path, key="wrong")
        assert status == 403, path
        for key in (READ_KEY, ROOT_KEY):
            status, _ = await guarded.call("GET", path, key=key)
            assert status == 200, (path, key)
    # A read key changes nothing.
    status, _ = await guarded.call("POST", f"/v1/experiments/{name}/pause", key=READ_KEY)
    assert status == 403
    # Health stays open for load balancers.
    assert (await guarded.call("GET", "/health/live", key=None))[0] == 200


async def test_a_browser_is_asked_for_the_key_and_may_send_it_as_basic_auth(
    guarded: Control, name: str
) -> None:
    async with guarded.http.get(f"{guarded.url}/dashboard") as response:
        assert response.status == 401
        assert response.headers["www-authenticate"].startswith('Basic realm="banditgate"')
    basic = base64.b64encode(f"anyone:{READ_KEY}".encode()).decode()
    headers = {"authorization": f"Basic {basic}"}
    async with guarded.http.get(f"{guarded.url}/dashboard", headers=headers) as response:
        assert response.status == 200


async def test_a_key_limited_to_some_experiments_touches_only_those(
    guarded: Control, name: str
) -> None:
    mine, other = f"team-a-{name}", f"team-b-{name}"
    status, body = await guarded.call("POST", "/v1/experiments", spec_doc(mine), key=TEAM_KEY)
    assert status == 201, body
    status, body = await guarded.call("POST", "/v1/experiments", spec_doc(other), key=TEAM_KEY)
    assert status == 403
    assert body["error"]["message"] == f"this key may not touch experiment {other!r}"
    assert (await guarded.call("POST", "/v1/experiments", spec_doc(other), key=ROOT_KEY))[0] == 201
    assert (await guarded.call("GET", f"/v1/experiments/{mine}", key=TEAM_KEY))[0] == 200
    assert (await guarded.call("GET", f"/v1/experiments/{other}", key=TEAM_KEY))[0] == 403
    assert (await guarded.call("POST", f"/v1/experiments/{other}/pause", key=TEAM_KEY))[0] == 403
    assert (await guarded.call("POST", f"/v1/experiments/{mine}/pause", key=TEAM_KEY))[0] == 200
    status, listing = await guarded.call("GET", "/v1/experiments", key=TEAM_KEY)
    names = {item["name"] for item in listing["experiments"]}
    assert mine in names and other not in names
    # Routes over every experiment are not for it.
    assert (await guarded.call("GET", "/metrics", key=TEAM_KEY))[0] == 403
    for experiment in (mine, other):
        await guarded.call("DELETE", f"/v1/experiments/{experiment}", key=ROOT_KEY)
