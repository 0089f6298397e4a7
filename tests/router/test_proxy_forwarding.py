"""The pass-through proxy as reverse proxies behave: X-Forwarded-*, WebSocket upgrades refused."""

from __future__ import annotations

import aiohttp
import pytest

from banditgate.spec import parse_spec
from tests.support import run_backend


async def test_the_arm_learns_who_asked_and_for_which_host(start_router, name):
    async with run_backend() as backend:
        spec = parse_spec({"name": name, "arms": [{"name": "a", "url": backend.url}]})
        url, _ = await start_router(spec)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/proxy/{name}/page") as response:
                assert response.status == 200
            headers = {"X-Forwarded-For": "203.0.113.9", "Host": "shop.example"}
            async with http.get(f"{url}/proxy/{name}/page", headers=headers) as response:
                assert response.status == 200
    first, second = (r["headers"] for r in backend.requests)
    assert first["x-forwarded-for"] == "127.0.0.1"
    assert first["x-forwarded-proto"] == "http"
    assert first["x-forwarded-host"] == url.removeprefix("http://")
    assert first["host"] == backend.url.removeprefix("http://")  # the arm's own Host
    # uvicorn trusts loopback's X-Forwarded-For (its proxy headers): the client is already
    # the header's last address, and the chain goes on as it came.
    assert second["x-forwarded-for"] == "203.0.113.9"
    assert second["x-forwarded-host"] == "shop.example"


async def test_a_websocket_upgrade_is_refused_with_a_clear_400(start_router, name):
    async with run_backend() as backend:
        spec = parse_spec({"name": name, "arms": [{"name": "a", "url": backend.url}]})
        url, _ = await start_router(spec)
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
                await http.ws_connect(f"{url}/proxy/{name}/socket")
    assert caught.value.status == 400
    assert backend.requests == []


async def test_an_upgrade_request_is_refused_naming_the_header(start_router, name):
    async with run_backend() as backend:
        spec = parse_spec({"name": name, "arms": [{"name": "a", "url": backend.url}]})
        url, _ = await start_router(spec)
        headers = {"Connection": "Upgrade", "Upgrade": "h2c"}
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{url}/proxy/{name}/x", headers=headers) as response,
        ):
            assert response.status == 400
            error = (await response.json())["error"]
    assert error["field"] == "Upgrade" and "not proxied" in error["message"]
    assert backend.requests == []
