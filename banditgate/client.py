"""A small JSON client for the control plane's HTTP API (stdlib only: a CLI call is a request or two)."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import orjson

DEFAULT_URL = "http://127.0.0.1:8080"


class ApiError(Exception):
    """An error answer; `message` is the API's own."""

    def __init__(self, status: int, body: Any) -> None:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        self.status = status
        self.type = error.get("type", "HTTPError")
        self.field = error.get("field")
        self.message = error.get("message") or (body if isinstance(body, str) else f"HTTP {status}")
        super().__init__(self.message)


class Unreachable(Exception):
    def __init__(self, url: str, reason: Any) -> None:
        self.url = url
        super().__init__(f"cannot reach the control plane at {url}: {reason}")


class ControlClient:
    def __init__(self, url: str, admin_key: str | None = None, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.admin_key = admin_key
        self.timeout_s = timeout_s

    def request(
        self, method: str, path: str, body: Any = None, *, timeout_s: float | None = None
    ) -> Any:
        """The decoded JSON answer (None when empty); ApiError or Unreachable otherwise."""
        headers = {"accept": "application/json"}
        data = None
        if body is not None:
            data = orjson.dumps(body)
            headers["content-type"] = "application/json"
        if self.admin_key:
            headers["authorization"] = f"Bearer {self.admin_key}"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout_s or self.timeout_s) as response:
                raw = response.read()
                return orjson.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                parsed: Any = orjson.loads(raw)
            except orjson.JSONDecodeError:
                parsed = raw.decode(errors="replace")
            raise ApiError(exc.code, parsed) from None
        except urllib.error.URLError as exc:
            raise Unreachable(self.url, exc.reason) from None
        except (TimeoutError, ConnectionError) as exc:
            raise Unreachable(self.url, exc) from None

    def get(self, path: str) -> Any:
        return self.request("GET", path)


def quoted(name: str) -> str:
    """One URL path segment."""
    return urllib.parse.quote(name, safe="")


def first_key(value: str | None) -> str | None:
    """The key to send from a BANDITGATE_ADMIN_KEYS-style list (comma-separated or JSON)."""
    if not value:
        return None
    text = value.strip()
    if text.startswith("["):
        try:
            keys = [str(k) for k in orjson.loads(text)]
        except orjson.JSONDecodeError:
            keys = [text]
    else:
        keys = text.split(",")
    return next((k.strip() for k in keys if k.strip()), None)
