"""Experiment specs and traffic overrides, kept in Redis and announced on change."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any, cast

import orjson
from redis.exceptions import WatchError

from banditgate import keys
from banditgate.announce import AfterCommit
from banditgate.contracts import Announced
from banditgate.errors import Conflict, UnknownExperiment
from banditgate.locks import control_lock
from banditgate.redis import Redis, is_cluster
from banditgate.spec import ExperimentSpec, parse_spec

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 20


def spec_changes(old: dict[str, Any] | None, new: dict[str, Any]) -> list[dict[str, Any]]:
    """Field-level differences between two spec documents."""
    if old is None:
        return [{"path": "(root)", "op": "create"}]
    changes: list[dict[str, Any]] = []

    def walk(path: str, a: Any, b: Any) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b), key=str):
                child = f"{path}.{key}" if path else str(key)
                if key not in a:
                    changes.append({"path": child, "op": "add", "new": b[key]})
                elif key not in b:
                    changes.append({"path": child, "op": "remove", "old": a[key]})
                else:
                    walk(child, a[key], b[key])
        elif isinstance(a, list) and isinstance(b, list) and path == "arms":
            old_arms = {arm.get("name"): arm for arm in a if isinstance(arm, dict)}
            new_arms = {arm.get("name"): arm for arm in b if isinstance(arm, dict)}
            for name in new_arms.keys() - old_arms.keys():
                changes.append({"path": f"arms[{name}]", "op": "add", "new": new_arms[name]})
            for name in old_arms.keys() - new_arms.keys():
                changes.append({"path": f"arms[{name}]", "op": "remove", "old": old_arms[name]})
            for name in old_arms.keys() & new_arms.keys():
                walk(f"arms[{name}]", old_arms[name], new_arms[name])
        elif a != b:
            changes.append({"path": path, "op": "replace", "old": a, "new": b})

    walk("", old, new)
    return changes


def override_applies(spec: ExperimentSpec, override: dict[str, Any] | None) -> bool:
    """An override made for one mode (and rollout target) lapses when the spec moves on.

    So switching a canary experiment to `ab` or `bandit` takes effect at once, and a
    canary's weights never leak onto the next canary's arms. Overrides that name
    no mode apply in every mode.
    """
    if override is None:
        return False
    mode = override.get("mode")
    if mode is not None and mode != spec.mode:
        return False
    target = override.get("target")
    if target is not None and tuple(target) != spec.rollout_target:
        return False
    weights = override.get("weights") or {}
    return sum(max(float(weights.get(name, 0.0)), 0.0) for name in spec.arm_names) > 0


def override_record(
    last: dict[str, Any] | None, weights: dict[str, float], /, *, reason: str, **extra: Any
) -> dict[str, Any]:
    """The stored form of a weights override; the revision counts up from the last one.

    Positional-only, so an override may itself carry a field named like a parameter
    (a pause keeps the weights it replaced under `previous`).
    """
    return {
        "weights": weights,
        "reason": reason,
        "ts_ms": int(time.time() * 1000),
        "revision": (last or {}).get("revision", 0) + 1,
        **extra,
    }


class ExperimentStore:
    """Specs, their version history and the weights override; every write holds the control lock.

    A spec version is the length of the history list. `put` reads the stored spec and
    the history length and writes the new version in one WATCH/MULTI transaction, so
    two writers never get one number, even one that bypassed or outlived the lock.
    """

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def locked(self, name: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold the experiment's control lock across a read-modify-write (re-entrant)."""
        return control_lock(self.redis, name)

    async def names(self) -> list[str]:
        members = cast(set[bytes], await self.redis.smembers(keys.EXPERIMENTS))
        return sorted(m.decode() for m in members)

    async def get(self, name: str) -> ExperimentSpec:
        raw = await self.redis.get(keys.spec(name))
        if raw is None:
            raise UnknownExperiment(name)
        return parse_spec(orjson.loads(raw))

    async def find(self, name: str) -> ExperimentSpec | None:
        raw = await self.redis.get(keys.spec(name))
        return parse_spec(orjson.loads(raw)) if raw is not None else None

    async def all(self) -> dict[str, ExperimentSpec]:
        names = await self.names()
        specs: dict[str, ExperimentSpec] = {}
        for name in names:
            spec = await self.find(name)
            if spec is not None:
                specs[name] = spec
        return specs

    async def version(self, name: str) -> int:
        """The current spec version (0: never stored)."""
        return int(await self.redis.llen(keys.spec_history(name)))

    async def put(self, spec: ExperimentSpec, *, reason: str = "apply") -> dict[str, Any]:
        """Create or replace; returns the history entry (version, changes)."""
        async with self.locked(spec.name):
            for _ in range(MAX_ATTEMPTS):
                try:
                    return await self._put(spec, reason)
                except WatchError:
                    continue
        raise Conflict(f"experiment {spec.name!r} kept changing while being written; retry")

    async def _put(self, spec: ExperimentSpec, reason: str) -> dict[str, Any]:
        spec_key, history_key = keys.spec(spec.name), keys.spec_history(spec.name)
        new_doc = orjson.loads(spec.to_json())
        async with self.redis.pipeline(transaction=True) as pipe:
            await pipe.watch(spec_key, history_key)
            old_raw = await pipe.get(spec_key)
            current = int(await pipe.llen(history_key))
            old_doc = orjson.loads(old_raw) if old_raw is not None else None
            changes = spec_changes(old_doc, new_doc)
            if old_doc is not None and not changes:
                await pipe.unwatch()
                return {
                    "version": current,
                    "ts_ms": int(time.time() * 1000),
                    "reason": reason,
                    "changes": [],
                    "spec": new_doc,
                    "unchanged": True,
                }
            entry = {
                "version": current + 1,
                "ts_ms": int(time.time() * 1000),
                "reason": reason,
                "changes": changes,
                "spec": new_doc,
            }
            clustered = is_cluster(self.redis)
            if clustered:
                # The set of names is in another slot than the experiment's keys: added
                # first (readers skip a name without a spec), then the spec in one slot.
                await self.redis.sadd(keys.EXPERIMENTS, spec.name)
            later = AfterCommit(self.redis)
            pipe.multi()
            pipe.set(spec_key, spec.to_json())
            if not clustered:
                pipe.sadd(keys.EXPERIMENTS, spec.name)
            pipe.rpush(history_key, orjson.dumps(entry))
            later.add(pipe, spec.name, Announced.SPEC, version=current + 1)
            await pipe.execute()
            await later.send()
        entry["created"] = old_doc is None
        return entry

    async def history(self, name: str) -> list[dict[str, Any]]:
        raw = await self.redis.lrange(keys.spec_history(name), 0, -1)
        return [orjson.loads(item) for item in raw]

    async def delete(self, name: str) -> None:
        async with self.locked(name):
            if not await self.redis.exists(keys.spec(name)):
                raise UnknownExperiment(name)
            doomed = [
                key
                async for key in self.redis.scan_iter(match=keys.experiment_keys_pattern(name))
                if key.decode() != keys.control_lock(name)  # released on the way out
            ]
            clustered = is_cluster(self.redis)
            later = AfterCommit(self.redis)
            async with self.redis.pipeline(transaction=True) as pipe:
                if not clustered:
                    pipe.srem(keys.EXPERIMENTS, name)
                if doomed:
                    pipe.delete(*doomed)
                later.add(pipe, name, Announced.DELETED)
                await pipe.execute()
            if clustered:
                # Another slot: removed after the keys (a name left behind has no spec).
                await self.redis.srem(keys.EXPERIMENTS, name)
            await later.send()

    async def set_override(
        self, name: str, weights: dict[str, float] | None, *, reason: str, **extra: Any
    ) -> dict[str, Any] | None:
        """Static weights that take precedence over the mode's own allocation (None clears).

        `mode=` and `target=` in `extra` scope the weights (see `override_applies`).
        The revision counts up from the stored one in one WATCH/MULTI transaction
        (the rollout store writes the same key that way).
        """
        key = keys.weights(name)
        async with self.locked(name):
            for _ in range(MAX_ATTEMPTS):
                async with self.redis.pipeline(transaction=True) as pipe:
                    try:
                        await pipe.watch(key)
                        raw = await pipe.get(key)
                        record = None
                        if weights is not None:
                            last = orjson.loads(raw) if raw is not None else None
                            record = override_record(last, weights, reason=reason, **extra)
                        later = AfterCommit(self.redis)
                        pipe.multi()
                        if record is None:
                            pipe.delete(key)
                        else:
                            pipe.set(key, orjson.dumps(record))
                        later.add(pipe, name, Announced.WEIGHTS)
                        await pipe.execute()
                        await later.send()
                        return record
                    except WatchError:
                        continue
        raise Conflict(f"the weights of {name!r} kept changing while being written; retry")

    async def get_override(self, name: str) -> dict[str, Any] | None:
        raw = await self.redis.get(keys.weights(name))
        return orjson.loads(raw) if raw is not None else None


async def apply_specs(redis: Redis, specs: Sequence[ExperimentSpec], *, reason: str) -> None:
    """Store each spec (a new version only where it changed), logging what happened."""
    store = ExperimentStore(redis)
    for spec in specs:
        entry = await store.put(spec, reason=reason)
        state = "unchanged" if entry.get("unchanged") else "applied"
        log.info("experiment %s %s (spec version %s)", spec.name, state, entry["version"])
