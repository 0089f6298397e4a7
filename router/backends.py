"""Forwarding a request to an arm over pooled keep-alive connections."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from banditgate.errors import BackendError, BackendTimeout
from banditgate.spec import Arm
from router.http_client import ClientError, ClientTimeout, HttpClient


class ArmUnreachable(BackendError):
    """No connection to the arm: nothing was sent, so another arm may take the request."""

    @property
    def type(self) -> str:
        return "BackendError"  # what clients see is unchanged


class ArmConnectTimeout(BackendTimeout):
    """No connection to the arm in time: nothing was sent."""

    @property
    def type(self) -> str:
        return "BackendTimeout"


# Failures after which the request provably never reached the backend.
NOT_SENT = (ArmUnreachable, ArmConnectTimeout)

# Request headers a proxy must not forward (RFC 9110 hop-by-hop, plus ones the client sets).
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
        "expect",
    }
)
_RESPONSE_SKIP = frozenset(
    name.encode() for name in (*_HOP_BY_HOP, "date", "server", "content-type")
)


@dataclass
class BackendResponse:
    status: int
    body: bytes
    content_type: bytes | None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    latency_ms: float = 0.0

    def passthrough_headers(self) -> list[tuple[bytes, bytes]]:
        """End-to-end response headers (names lowercased), without content-type."""
        return [(k.lower(), v) for k, v in self.headers if k.lower() not in _RESPONSE_SKIP]

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if len(key) == len(name) and key.lower() == name:
                return value
        return None


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
    """The arms' HTTP client: pooled keep-alive connections, per-call timeouts."""

    def __init__(
        self,
        *,
        timeout_s: float = 10.0,
        connect_timeout_s: float = 1.0,
        max_connections: int = 128,
    ) -> None:
        self.timeout_s = timeout_s
        self.client = HttpClient(
            connect_timeout_s=connect_timeout_s, max_connections_per_host=max_connections
        )

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        await self.client.close()

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
        seconds = timeout_s or arm.timeout_s or self.timeout_s
        started = time.perf_counter()
        try:
            response = await self.client.request(
                method,
                url,
                headers,
                body,
                timeout_s=seconds,
                connect_timeout_s=arm.connect_timeout_s,
            )
        except ClientTimeout as exc:
            if not exc.sent:
                raise ArmConnectTimeout(f"arm {arm.name!r}: {exc}") from None
            raise BackendTimeout(f"arm {arm.name!r} did not answer within {seconds:g}s") from None
        except ClientError as exc:
            if not exc.sent:
                raise ArmUnreachable(f"arm {arm.name!r} unreachable: {exc}") from None
            raise BackendError(f"arm {arm.name!r} failed: {exc}") from None
        return BackendResponse(
            status=response.status,
            body=response.body,
            content_type=response.content_type,
            headers=response.headers,
            latency_ms=(time.perf_counter() - started) * 1000,
        )
