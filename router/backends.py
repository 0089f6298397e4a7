"""Forwarding a request to an arm over one shared keep-alive aiohttp session."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp

from banditgate.errors import BackendError, BackendTimeout
from banditgate.spec import Arm

# Request headers a proxy must not forward (RFC 9110 hop-by-hop, plus ones aiohttp sets).
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "accept-encoding",
    }
)
_RESPONSE_SKIP = _HOP_BY_HOP | {"content-encoding", "date", "server"}


@dataclass
class BackendResponse:
    status: int
    body: bytes
    content_type: str | None
    headers: list[tuple[str, str]] = field(default_factory=list)
    latency_ms: float = 0.0


class Backend(Protocol):
    async def send(
        self,
        arm: Arm,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        method: str = "POST",
        timeout_s: float | None = None,
    ) -> BackendResponse: ...


def forward_headers(
    headers: Mapping[str, str], drop: frozenset[str] = frozenset()
) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in _HOP_BY_HOP and k not in drop}


class HttpBackend:
    """The arms' HTTP client: one session, keep-alive, per-call timeouts."""

    def __init__(
        self,
        *,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 2.0,
        max_connections: int = 0,
    ) -> None:
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    async def start(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.max_connections,
                limit_per_host=self.max_connections,
                keepalive_timeout=30,
                ttl_dns_cache=60,
            )
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _timeout(self, seconds: float) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get(seconds)
        if timeout is None:
            timeout = aiohttp.ClientTimeout(total=seconds, sock_connect=self.connect_timeout_s)
            self._timeouts[seconds] = timeout
        return timeout

    async def send(
        self,
        arm: Arm,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        method: str = "POST",
        timeout_s: float | None = None,
    ) -> BackendResponse:
        if self._session is None:
            raise RuntimeError("HttpBackend.start() was not called")
        seconds = timeout_s or arm.timeout_s or self.timeout_s
        started = time.perf_counter()
        try:
            async with self._session.request(
                method, url, data=body, headers=dict(headers), timeout=self._timeout(seconds)
            ) as response:
                data = await response.read()
                out_headers = [
                    (k, v) for k, v in response.headers.items() if k.lower() not in _RESPONSE_SKIP
                ]
                return BackendResponse(
                    status=response.status,
                    body=data,
                    content_type=response.headers.get("Content-Type"),
                    headers=out_headers,
                    latency_ms=(time.perf_counter() - started) * 1000,
                )
        except TimeoutError:
            raise BackendTimeout(
                f"arm {arm.name!r} did not answer within {seconds:g}s", status=504
            ) from None
        except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as exc:
            raise BackendError(f"arm {arm.name!r} failed: {type(exc).__name__}: {exc}") from None
