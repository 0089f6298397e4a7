"""A lean HTTP/1.1 keep-alive client for forwarding to arms.

Parsing is httptools (llhttp, as in uvicorn); this module only pools connections,
writes requests and enforces timeouts. aiohttp's client spends ~350k CPU
instructions per proxied request here, this one ~120k (bench/router_instructions.py),
which is what lets the router decide, log and still forward at pass-through speed.

Scope: what a proxy to model servers needs. Request bodies are sent with
Content-Length; responses may be length-delimited, chunked or close-delimited.
No redirects, cookies, proxies or compression handling (bodies pass through).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from urllib.parse import urlsplit

import httptools

Header = tuple[bytes, bytes]


class ClientError(Exception):
    """The exchange failed: refused, reset, malformed, or too large."""

    sent = True  # some byte of the request may have reached the server


class ClientTimeout(ClientError):
    pass


class ConnectFailed(ClientError):
    """No connection: not one byte of the request was sent."""

    sent = False


class ConnectTimeout(ClientTimeout):
    """No connection (or no free one under the cap) in time: nothing was sent."""

    sent = False


# Methods a client may repeat (RFC 9110 9.2.2): only these are re-sent after a kept-alive
# connection fails without a response, since the server may have processed the request.
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    host_header: str

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)


@lru_cache(maxsize=4096)
def parse_target(url: str) -> tuple[Target, str]:
    """(connection target, path with query) for an absolute http(s) URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ClientError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    default = (parts.scheme == "http" and port == 80) or (parts.scheme == "https" and port == 443)
    host_header = parts.hostname if default else f"{parts.hostname}:{port}"
    if ":" in parts.hostname:  # IPv6 literal
        host_header = f"[{parts.hostname}]" if default else f"[{parts.hostname}]:{port}"
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return Target(parts.scheme, parts.hostname, port, host_header), path


@dataclass
class Response:
    status: int
    headers: list[Header] = field(default_factory=list)
    body: bytes = b""
    content_type: bytes | None = None


class _Connection(asyncio.Protocol):
    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.received = 0
        self.idle_since = 0.0
        self.head_request = False
        self.keep_alive = False
        self.headers_done = False
        self.length_known = False
        self.response = Response(0)
        self._chunks: list[bytes] = []

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ClientError("the backend tried to upgrade the connection"))
        except httptools.HttpParserError as exc:
            self._fail(ClientError(f"malformed response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            if self.headers_done and not self.length_known:
                self._complete()  # a close-delimited body ends with the connection
                self.keep_alive = False
            else:
                waiter.set_exception(ClientError("connection closed by the backend"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.response.headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-type":
            self.response.content_type = value
        elif lowered == b"content-length" or lowered == b"transfer-encoding":
            self.length_known = True

    def on_headers_complete(self) -> None:
        self.response.status = self.parser.get_status_code()
        self.headers_done = True
        if self.response.status in (204, 304) or 100 <= self.response.status < 200:
            self.length_known = True
        if self.head_request:
            self._complete()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        if self.received > self.max_body:
            self._fail(ClientError(f"response larger than {self.max_body} bytes"))

    def on_message_complete(self) -> None:
        self._complete()

    def _complete(self) -> None:
        # llhttp resets after the message: keep-alive is only known inside the callback.
        self.keep_alive = self.parser.should_keep_alive()
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            chunks = self._chunks
            self.response.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            waiter.set_result(None)

    def _fail(self, error: Exception) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def start(self, loop: asyncio.AbstractEventLoop, head_request: bool) -> asyncio.Future[None]:
        self.response = Response(0)
        self._chunks = []
        self.received = 0
        self.keep_alive = False
        self.headers_done = False
        self.length_known = False
        self.head_request = head_request
        self.waiter = loop.create_future()
        return self.waiter


class HttpClient:
    def __init__(
        self,
        *,
        connect_timeout_s: float = 2.0,
        idle_timeout_s: float = 4.0,
        max_idle_per_host: int = 256,
        max_response_bytes: int = 256 * 1024 * 1024,
        max_connections_per_host: int = 0,
    ) -> None:
        # Idle connections are dropped before common server keep-alive limits
        # (uvicorn closes after 5 s), so a reused connection is rarely a dead one.
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_idle_per_host = max_idle_per_host
        self.max_response_bytes = max_response_bytes
        self._idle: dict[tuple[str, str, int], collections.deque[_Connection]] = (
            collections.defaultdict(collections.deque)
        )
        self._ssl: ssl.SSLContext | None = None
        # 0: no cap. Otherwise requests beyond the cap wait for a connection (and
        # their timeout keeps running), so a slow backend is not flooded.
        self.max_connections_per_host = max_connections_per_host
        self._limits: dict[tuple[str, str, int], asyncio.Semaphore] = {}
        self.opened = 0

    async def close(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        timeout_s: float,
        connect_timeout_s: float | None = None,
    ) -> Response:
        target, path = parse_target(url)
        connect_s = connect_timeout_s or self.connect_timeout_s
        if not self.max_connections_per_host:
            return await self._request(method, target, path, headers, body, timeout_s, connect_s)
        limit = self._limits.get(target.key)
        if limit is None:
            limit = self._limits[target.key] = asyncio.Semaphore(self.max_connections_per_host)
        try:
            await asyncio.wait_for(limit.acquire(), timeout_s)
        except TimeoutError:
            raise ConnectTimeout(
                f"no free connection to {target.host}:{target.port} in time "
                f"({self.max_connections_per_host} in use)"
            ) from None
        try:
            return await self._request(method, target, path, headers, body, timeout_s, connect_s)
        finally:
            limit.release()

    async def _request(
        self,
        method: str,
        target: Target,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        timeout_s: float,
        connect_s: float,
    ) -> Response:
        head = self._head(method, path, target, headers, body)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        connection, reused = self._take(target)
        if connection is None:
            connection = await self._open(target, loop, deadline, connect_s)
        try:
            return await self._exchange(connection, loop, head, body, method, deadline, target)
        except ClientError as error:
            # A kept-alive connection that fails before any byte of response was most
            # likely closed by the backend while idle, but it may also have processed the
            # request and then reset: only a request that may be repeated is sent again.
            if (
                not reused
                or connection.received
                or isinstance(error, ClientTimeout)
                or method not in _IDEMPOTENT
            ):
                raise
        connection = await self._open(target, loop, deadline, connect_s)
        return await self._exchange(connection, loop, head, body, method, deadline, target)

    @staticmethod
    def _head(
        method: str, path: str, target: Target, headers: Mapping[str, str], body: bytes
    ) -> bytes:
        lines = [
            f"{method} {path} HTTP/1.1\r\nhost: {target.host_header}\r\ncontent-length: {len(body)}\r\n"
        ]
        for name, value in headers.items():
            if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
                continue  # never let a header value split the request
            lines.append(f"{name}: {value}\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("latin-1", "replace")

    def _take(self, target: Target) -> tuple[_Connection | None, bool]:
        idle = self._idle.get(target.key)
        if not idle:
            return None, False
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < self.idle_timeout_s:
                return connection, True
            connection.close()
        return None, False

    async def _open(
        self, target: Target, loop: asyncio.AbstractEventLoop, deadline: float, connect_s: float
    ) -> _Connection:
        ssl_context = None
        if target.scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            ssl_context = self._ssl
        timeout = min(connect_s, max(deadline - loop.time(), 0.001))
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(self.max_response_bytes),
                    target.host,
                    target.port,
                    ssl=ssl_context,
                    server_hostname=target.host if ssl_context else None,
                ),
                timeout,
            )
        except TimeoutError:
            raise ConnectTimeout(f"connecting to {target.host}:{target.port} timed out") from None
        except OSError as exc:
            raise ConnectFailed(
                f"cannot connect to {target.host}:{target.port}: {exc.strerror or exc}"
            ) from None
        self.opened += 1
        return connection

    async def _exchange(
        self,
        connection: _Connection,
        loop: asyncio.AbstractEventLoop,
        head: bytes,
        body: bytes,
        method: str,
        deadline: float,
        target: Target,
    ) -> Response:
        waiter = connection.start(loop, method == "HEAD")
        timer = loop.call_at(deadline, _expire, waiter, connection)
        try:
            assert connection.transport is not None
            if len(body) < 65536:
                connection.transport.write(head + body)
            else:
                connection.transport.write(head)
                connection.transport.write(body)
            await waiter
        except asyncio.CancelledError:
            connection.close()  # the caller went away mid-exchange: the connection is dirty
            raise
        finally:
            timer.cancel()
            connection.waiter = None
        response = connection.response
        if not connection.closed and connection.keep_alive and not connection.head_request:
            idle = self._idle[target.key]
            if len(idle) < self.max_idle_per_host:
                connection.idle_since = time.monotonic()
                idle.append(connection)
            else:
                connection.close()
        else:
            connection.close()
        return response


def _expire(waiter: asyncio.Future[None], connection: _Connection) -> None:
    if not waiter.done():
        waiter.set_exception(ClientTimeout("the backend did not answer in time"))
    connection.close()
