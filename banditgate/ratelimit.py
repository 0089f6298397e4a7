"""Per-key and per-client rate limits: token buckets in this process, bounded in number.

Requests are sorted into classes (rewards, rank, control); each class has a rate per
second and a burst of twice that. A request spends one token from its client's bucket
(the peer address) and, when it carries an Authorization header, one from its key's
bucket too (the key is kept only as a hash). Answers 401 and 403 also spend from the
client's `auth` bucket, and a client with none left gets 429 before its key is even
looked at: guessing keys runs at `auth` per second at most.

Limits are per process (with several workers or routers, the total is the sum). The
buckets live in an LRU map of at most `max_clients` entries: a flood of new addresses
evicts the oldest buckets instead of growing memory (a client evicted that way starts
again with a full bucket).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import orjson

from banditgate.errors import TooManyRequests

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass
class _Bucket:
    tokens: float
    at: float


class Buckets:
    def __init__(
        self, *, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self._buckets: OrderedDict[tuple[str, str], _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: tuple[str, str], rate: float, *, spend: bool = True) -> float:
        """0 if a token was there (spent unless `spend` is False), else seconds until one is."""
        bucket = self._refilled(key, rate)
        if bucket.tokens >= 1:
            if spend:
                bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / rate

    def charge(self, key: tuple[str, str], rate: float) -> None:
        """Spend a token even if there is none: a debt later requests wait out. Charging
        after the fact (a refused key) still holds concurrent clients to the rate."""
        bucket = self._refilled(key, rate)
        bucket.tokens = max(bucket.tokens - 1, -100 * max(rate * 2, 1.0))

    def _refilled(self, key: tuple[str, str], rate: float) -> _Bucket:
        now = self.clock()
        burst = max(rate * 2, 1.0)
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = _Bucket(burst, now)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.at) * rate)
        bucket.at = now
        self._buckets[key] = bucket
        while len(self._buckets) > self.max_entries:
            self._buckets.popitem(last=False)
        return bucket


def classify(method: str, path: str) -> str | None:
    """The rate class of a request, or None for what is not limited (health, invocations)."""
    if path.startswith(("/v1/rewards", "/v1/events/")):
        return "rewards"
    if path.startswith("/v1/experiments/") and path.endswith("/rank") and method == "POST":
        return "rank"
    if path.startswith(("/v1/experiments", "/v1/export", "/dashboard", "/metrics")):
        return "control"
    return None


class RateLimit:
    """ASGI middleware; `rates`: requests per second by class (0 or missing: unlimited)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        rates: Mapping[str, float],
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.rates = {name: rate for name, rate in rates.items() if rate > 0}
        self.buckets = Buckets(max_entries=max_clients, clock=clock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        kind = classify(scope["method"], scope["path"])
        rate = self.rates.get(kind or "")
        if kind is None or rate is None:
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("?", 0))[0]
        key = _key_id(scope)
        wait = 0.0
        auth_rate = self.rates.get("auth")
        if auth_rate is not None and key is not None:
            wait = self.buckets.take(("auth", client), auth_rate, spend=False)
            reason = "too many refused keys from this client"
        if not wait:
            wait = self.buckets.take((kind, client), rate)
            reason = f"too many {kind} requests from this client"
        if not wait and key is not None:
            wait = self.buckets.take((kind, key), rate)
            reason = f"too many {kind} requests with this key"
        if wait:
            await _refuse(send, TooManyRequests(reason, retry_after_s=math.ceil(wait)))
            return

        async def watch(message: Message) -> None:
            if (
                auth_rate is not None
                and message["type"] == "http.response.start"
                and message["status"] in (401, 403)
            ):
                self.buckets.charge(("auth", client), auth_rate)
            await send(message)

        await self.app(scope, receive, watch)


def _key_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            return "key:" + hashlib.sha256(value).hexdigest()[:32]
    return None


async def _refuse(send: Send, error: TooManyRequests) -> None:
    body = orjson.dumps(error.to_dict())
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(error.retry_after_s).encode()),
    ]
    await send({"type": "http.response.start", "status": 429, "headers": headers})
    await send({"type": "http.response.body", "body": body})
