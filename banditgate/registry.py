"""The policy registry: versioned models per experiment, with lineage and OPE numbers."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import orjson
from redis.exceptions import WatchError

from banditgate import keys
from banditgate.announce import AfterCommit
from banditgate.auto import AUTO, concrete, learner_of_model, serves
from banditgate.contracts import Announced
from banditgate.errors import Conflict, InvalidPolicy, UnknownPolicyVersion
from banditgate.policy import validate_model
from banditgate.redis import Redis
from banditgate.settings import CoreSettings
from banditgate.spec import ExperimentSpec
from banditgate.store import MAX_ATTEMPTS, ExperimentStore


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
    """Versioned models per experiment. Publishing and activating validate the model
    against the stored spec (learner and arms) under the experiment's control lock, and
    write in one transaction: a refused model leaves no trace, not even a version number.
    """

    def __init__(self, redis: Redis, *, keep_versions: int | None = None) -> None:
        """`keep_versions`: how many versions to keep (BANDITGATE_POLICY_KEEP_VERSIONS)."""
        self.redis = redis
        self.specs = ExperimentStore(redis)
        self.keep_versions = keep_versions or CoreSettings().policy_keep_versions

    async def current_version(self, experiment: str) -> int | None:
        raw = await self.redis.get(keys.policy_current(experiment))
        return int(raw) if raw is not None else None

    async def publish(
        self,
        experiment: str,
        model: bytes,
        *,
        learner: str | None = None,
        parent: int | None = None,
        n_examples: int = 0,
        source: str = "manual",
        ope: dict[str, Any] | None = None,
        note: str = "",
        activate: bool = True,
        trained_through: str = "",
        last_joined_ms: int = 0,
    ) -> PolicyVersion:
        """Store `model` as the next version (and serve it, with `activate`).

        `learner` is what the caller built the model for; it must be the spec's. The
        version records the spec's learner and arms at the time of publishing.
        """
        async with self.specs.locked(experiment):
            spec = await self.specs.get(experiment)
            if spec.policy.learner == AUTO and learner in (None, AUTO):
                learner = learner_of_model(model)
            await _check(spec, model, learner)
            for _ in range(MAX_ATTEMPTS):
                async with self.redis.pipeline(transaction=True) as pipe:
                    try:
                        await pipe.watch(
                            keys.policy_seq(experiment), keys.policy_current(experiment)
                        )
                        version = int(await pipe.get(keys.policy_seq(experiment)) or 0) + 1
                        current = await pipe.get(keys.policy_current(experiment))
                        stored = await pipe.hkeys(keys.policy_versions(experiment))
                        serving = version if activate else int(current or 0)
                        pruned = self._pruned(stored, version, serving)
                        record = PolicyVersion(
                            experiment=experiment,
                            version=version,
                            learner=learner or spec.policy.learner,
                            parent=parent,
                            created_ms=int(time.time() * 1000),
                            n_examples=n_examples,
                            source=source,
                            ope=ope or {},
                            arms=spec.arm_names,
                            note=note,
                            trained_through=trained_through,
                            last_joined_ms=last_joined_ms,
                        )
                        later = AfterCommit(self.redis)
                        pipe.multi()
                        pipe.set(keys.policy_seq(experiment), version)
                        pipe.set(keys.policy_model(experiment, version), model)
                        pipe.hset(keys.policy_versions(experiment), str(version), record.to_json())
                        for old in pruned:
                            pipe.delete(keys.policy_model(experiment, old))
                            pipe.hdel(keys.policy_versions(experiment), str(old))
                        if activate:
                            self._activate(
                                pipe, experiment, version, f"published by {source}", later
                            )
                        await pipe.execute()
                        await later.send()
                        return record
                    except WatchError:
                        continue
        raise Conflict(f"policy versions of {experiment!r} kept changing while publishing; retry")

    def _pruned(self, stored: list[Any], newest: int, serving: int) -> list[int]:
        """Versions older than the last `keep_versions`, except the one served."""
        versions = sorted(int(v) for v in stored)
        cutoff = newest - self.keep_versions
        return [v for v in versions if v <= cutoff and v != serving]

    async def activate(self, experiment: str, version: int, reason: str) -> PolicyVersion:
        """Serve a stored version again, once its model still fits the experiment's spec."""
        async with self.specs.locked(experiment):
            spec = await self.specs.get(experiment)
            record = await self.get(experiment, version)
            await _check(spec, await self.model(experiment, version), None)
            later = AfterCommit(self.redis)
            async with self.redis.pipeline(transaction=True) as pipe:
                self._activate(pipe, experiment, version, reason, later)
                await pipe.execute()
            await later.send()
            return record

    def _activate(
        self, pipe: Any, experiment: str, version: int, reason: str, later: AfterCommit
    ) -> None:
        pipe.set(keys.policy_current(experiment), version)
        entry = {"ts_ms": int(time.time() * 1000), "version": version, "reason": reason}
        pipe.lpush(keys.policy_history(experiment), orjson.dumps(entry))
        pipe.ltrim(keys.policy_history(experiment), 0, 999)
        later.add(pipe, experiment, Announced.POLICY, version=version)

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


async def _check(spec: ExperimentSpec, model: bytes, learner: str | None) -> None:
    """Raise InvalidPolicy unless `model` can serve this spec (built for its learner, if said)."""
    if learner is not None and not serves(spec, learner):
        raise InvalidPolicy(
            f"experiment {spec.name!r} uses the {spec.policy.learner} learner, not {learner}",
            field="learner",
        )
    if spec.policy.learner == AUTO:
        spec = concrete(spec, learner or learner_of_model(model))
    await asyncio.to_thread(validate_model, spec, model)
