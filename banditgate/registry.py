"""The policy registry: versioned models per experiment, with lineage and OPE numbers."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import orjson

from banditgate import keys
from banditgate.announce import message
from banditgate.errors import UnknownPolicyVersion
from banditgate.redis import Redis


@dataclass
class PolicyVersion:
    experiment: str
    version: int
    learner: str
    parent: int | None
    created_ms: int
    n_examples: int = 0
    source: str = "manual"
    ope: dict[str, Any] = field(default_factory=dict)
    arms: list[str] = field(default_factory=list)
    note: str = ""
    trained_through: str = ""  # the last joined-stream entry this version learned from
    last_joined_ms: int = 0  # join time of the newest example it learned from

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes) -> PolicyVersion:
        data = orjson.loads(raw)
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})


class PolicyRegistry:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def current_version(self, experiment: str) -> int | None:
        raw = await self.redis.get(keys.policy_current(experiment))
        return int(raw) if raw is not None else None

    async def publish(
        self,
        experiment: str,
        model: bytes,
        *,
        learner: str,
        parent: int | None = None,
        n_examples: int = 0,
        source: str = "manual",
        ope: dict[str, Any] | None = None,
        arms: list[str] | None = None,
        note: str = "",
        activate: bool = True,
        trained_through: str = "",
        last_joined_ms: int = 0,
    ) -> PolicyVersion:
        version = int(await self.redis.incr(keys.policy_seq(experiment)))
        record = PolicyVersion(
            experiment=experiment,
            version=version,
            learner=learner,
            parent=parent,
            created_ms=int(time.time() * 1000),
            n_examples=n_examples,
            source=source,
            ope=ope or {},
            arms=arms or [],
            note=note,
            trained_through=trained_through,
            last_joined_ms=last_joined_ms,
        )
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(keys.policy_model(experiment, version), model)
            pipe.hset(keys.policy_versions(experiment), str(version), record.to_json())
            if activate:
                self._activate(pipe, experiment, version, f"published by {source}")
            await pipe.execute()
        return record

    async def activate(self, experiment: str, version: int, reason: str) -> PolicyVersion:
        record = await self.get(experiment, version)
        async with self.redis.pipeline(transaction=True) as pipe:
            self._activate(pipe, experiment, version, reason)
            await pipe.execute()
        return record

    def _activate(self, pipe: Any, experiment: str, version: int, reason: str) -> None:
        pipe.set(keys.policy_current(experiment), version)
        entry = {"ts_ms": int(time.time() * 1000), "version": version, "reason": reason}
        pipe.lpush(keys.policy_history(experiment), orjson.dumps(entry))
        pipe.ltrim(keys.policy_history(experiment), 0, 999)
        pipe.publish(keys.ANNOUNCE_CHANNEL, message(experiment, "policy", version=version))

    async def get(self, experiment: str, version: int) -> PolicyVersion:
        raw = cast(
            bytes | None, await self.redis.hget(keys.policy_versions(experiment), str(version))
        )
        if raw is None:
            raise UnknownPolicyVersion(f"experiment {experiment!r} has no policy version {version}")
        return PolicyVersion.from_json(raw)

    async def model(self, experiment: str, version: int) -> bytes:
        raw = cast(bytes | None, await self.redis.get(keys.policy_model(experiment, version)))
        if raw is None:
            raise UnknownPolicyVersion(
                f"experiment {experiment!r} has no model for version {version}"
            )
        return bytes(raw)

    async def load_current(self, experiment: str) -> tuple[int, bytes | None]:
        """(version, model); version 0 with no model is the cold-start policy."""
        version = await self.current_version(experiment)
        if version is None:
            return 0, None
        return version, await self.model(experiment, version)

    async def versions(self, experiment: str) -> list[PolicyVersion]:
        raw = cast(dict[bytes, bytes], await self.redis.hgetall(keys.policy_versions(experiment)))
        records = [PolicyVersion.from_json(value) for value in raw.values()]
        return sorted(records, key=lambda r: r.version)

    async def history(self, experiment: str, limit: int = 100) -> list[dict[str, Any]]:
        raw = await self.redis.lrange(keys.policy_history(experiment), 0, limit - 1)
        return [orjson.loads(item) for item in raw]
