"""Ownership of an experiment's singleton work (trainer, rollout controller) across processes."""

from __future__ import annotations

from banditgate.redis import Redis

# Take the lock if free, or extend it if ours: one round trip, no race between the two.
_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class OwnerLocks:
    """Locks with expiry held by one owner name; holding again renews. A crashed owner's lock lapses."""

    def __init__(self, redis: Redis, *, owner: str, ttl_ms: int) -> None:
        self.owner = owner
        self.ttl_ms = ttl_ms
        self._acquire = redis.register_script(_ACQUIRE)
        self._release = redis.register_script(_RELEASE)

    async def hold(self, key: str) -> bool:
        return bool(await self._acquire(keys=[key], args=[self.owner, self.ttl_ms]))

    async def release(self, key: str) -> None:
        await self._release(keys=[key], args=[self.owner])
