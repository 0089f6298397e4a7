"""Hostile control-plane bodies: too large (413), YAML bombs and deep nesting (400), never a 500."""

from __future__ import annotations

from collections.abc import AsyncIterator

from tests.support import Control

BOMB = b"""
name: x
a: &a [x, x, x, x, x, x, x, x, x]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
"""
YAML = {"content-type": "application/yaml"}


async def test_a_declared_body_over_the_limit_is_refused_unread(control: Control) -> None:
    big = b"[" + b"0," * (9 * 1024 * 1024) + b"0]"  # 18 MB
    status, body = await control.call("POST", "/v1/experiments", raw=big)
    assert status == 413
    assert body["error"]["type"] == "PayloadTooLarge"


async def test_a_streamed_body_over_the_limit_is_refused(control: Control) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b" " * (512 * 1024)  # 20 MB, chunked: no Content-Length

    headers = {"authorization": "Bearer test-admin-key", "content-type": "application/json"}
    async with control.http.post(
        control.url + "/v1/experiments/x/policies", data=chunks(), headers=headers
    ) as response:
        assert response.status == 413
        assert (await response.json())["error"]["type"] == "PayloadTooLarge"


async def test_a_spec_over_the_spec_limit(control: Control, name: str) -> None:
    doc = b'{"name": "%s", "description": "%s"}' % (name.encode(), b"x" * (2 * 1024 * 1024))
    status, body = await control.call("POST", "/v1/experiments", raw=doc)
    assert status == 413 and body["error"]["field"] == "body"


async def test_yaml_bombs_and_deep_documents_are_400_naming_the_limit(control: Control) -> None:
    status, body = await control.call("POST", "/v1/experiments", raw=BOMB, headers=YAML)
    assert status == 400
    assert "once aliases are expanded" in body["error"]["message"]
    deep = b"a: " + b"[" * 5000 + b"]" * 5000
    status, body = await control.call("POST", "/v1/experiments", raw=deep, headers=YAML)
    assert status == 400
    assert "nested deeper than 64 levels" in body["error"]["message"]
    status, body = await control.call("PUT", "/v1/experiments/x", raw=deep, headers=YAML)
    assert status == 400
    deep_json = b"[" * 100_000 + b"]" * 100_000
    status, body = await control.call("POST", "/v1/experiments", raw=deep_json)
    assert status == 422 and body["error"]["field"] == "body"
