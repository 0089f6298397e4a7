"""The control plane's shared state: Redis, stores, and the admin-key check."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from banditgate.http import BearerKeys, load_keys
from banditgate.redis import Redis, connect
from banditgate.registry import PolicyRegistry
from banditgate.store import ExperimentStore
from experiments.ledger import StatsBook
from experiments.settings import ControlSettings


class ControlService:
    def __init__(self, settings: ControlSettings, *, redis: Redis | None = None) -> None:
        self.settings = settings
        self._owns_redis = redis is None
        self._redis = redis
        self.admin = BearerKeys(load_keys(settings.admin_keys, settings.admin_keys_file), "admin")
        self._stats: StatsBook | None = None

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            raise RuntimeError("ControlService.startup() was not called")
        return self._redis

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

    async def startup(self) -> None:
        if self._redis is None:
            if not self.settings.redis_url:
                raise RuntimeError("BANDITGATE_REDIS_URL is not set")
            self._redis = connect(self.settings.redis_url)

    async def shutdown(self) -> None:
        if self._redis is not None and self._owns_redis:
            await self._redis.aclose()
            self._redis = None
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
