"""The control plane's shared state: Redis, stores, and the admin-key check."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from banditgate.arm_hosts import ArmHosts
from banditgate.errors import Forbidden
from banditgate.http import EVERYTHING, BearerKeys, Grant, load_keys
from banditgate.redis import Redis, RedisHandle
from banditgate.registry import PolicyRegistry
from banditgate.store import ExperimentStore
from experiments.ledger import StatsBook
from experiments.settings import ControlSettings


class ControlService:
    def __init__(self, settings: ControlSettings, *, redis: Redis | None = None) -> None:
        self.settings = settings
        self._redis = RedisHandle(settings.redis_url, redis, owner="ControlService")
        admin = load_keys(settings.admin_keys, settings.admin_keys_file)
        self.admin = BearerKeys(admin, "admin")
        readers = admin + load_keys(settings.read_keys, settings.read_keys_file)
        self.readers = BearerKeys(readers, "read")
        self.arm_hosts = ArmHosts.parse(settings.arm_hosts)
        self._stats: StatsBook | None = None
        self._started = False

    @property
    def redis(self) -> Redis:
        return self._redis.client

    @property
    def store(self) -> ExperimentStore:
        return ExperimentStore(self.redis)

    @property
    def registry(self) -> PolicyRegistry:
        return PolicyRegistry(self.redis)

    @property
    def stats(self) -> StatsBook:
        """Per-experiment tallies of the streams, read incrementally (see experiments.stats)."""
        if self._stats is None:
            self._stats = StatsBook(self.redis)
        return self._stats

    @property
    def started(self) -> bool:
        return self._started

    async def startup(self) -> None:
        self._redis.open()
        self._started = True

    async def shutdown(self) -> None:
        self._started = False
        await self._redis.close()
        self._stats = None


def get_service(request: Request) -> ControlService:
    service: ControlService = request.app.state.control
    return service


Service = Annotated[ControlService, Depends(get_service)]


async def require_admin(
    service: Service, authorization: Annotated[str | None, Header()] = None
) -> None:
    """Dependency for every call that changes state: 401 without a key, 403 with a wrong one."""
    service.admin.check(authorization)


Admin = Depends(require_admin)

# Routes a key limited to some experiments may call without naming one (they filter).
_UNNAMED_FOR_SCOPED = {("GET", "/v1/experiments"), ("POST", "/v1/experiments")}


async def authorize(
    request: Request, service: Service, authorization: Annotated[str | None, Header()] = None
) -> None:
    """Every control-plane route: reads need a read or admin key (once any key is set),
    changes an admin key; a key limited to some experiments touches only those."""
    reading = request.method in ("GET", "HEAD")
    keys = service.readers if reading else service.admin
    grant = keys.check(authorization)
    request.state.grant = grant
    if grant.scope is None:
        return
    name = request.path_params.get("name")
    if name is not None:
        check_scope(grant, str(name))
    elif (request.method, request.url.path.rstrip("/")) not in _UNNAMED_FOR_SCOPED:
        raise Forbidden(f"this key is limited to experiments {'+'.join(grant.scope)}")


def grant_of(request: Request) -> Grant:
    grant: Grant = getattr(request.state, "grant", EVERYTHING)
    return grant


def check_scope(grant: Grant, experiment: str) -> None:
    if not grant.allows(experiment):
        raise Forbidden(f"this key may not touch experiment {experiment!r}")
