"""The control plane's shared state: Redis, stores, and the admin-key check."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from banditgate.http import BearerKeys, load_keys
from banditgate.redis import Redis, RedisHandle
from banditgate.registry import PolicyRegistry
from banditgate.store import ExperimentStore
from experiments.ledger import StatsBook
from experiments.settings import ControlSettings


class ControlService:
    def __init__(self, settings: ControlSettings, *, redis: Redis | None = None) -> None:
        self.settings = settings
        self._redis = RedisHandle(settings.redis_url, redis, owner="ControlService")
        self.admin = BearerKeys(load_keys(settings.admin_keys, settings.admin_keys_file), "admin")
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
