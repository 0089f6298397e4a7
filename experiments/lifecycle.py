"""Changing experiments: specs, arms, pause/resume/end, spec and policy versions. No HTTP here.

Every read-modify-write holds a per-experiment Redis lock, so two admins (or two
control-plane processes) cannot interleave and lose an edit; `if_match` adds
optimistic concurrency on top (the spec version a client last saw).

Weights in an A/B test are relative. Adding an arm gives it `weight / total` of
the traffic (an equal share when no weight is given) and shrinks the others in
proportion; removing one spreads its share over the rest in proportion. The
total stays the same, so percentages stay percentages.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import math
import time
from typing import Any

import orjson

from banditgate import keys
from banditgate.auto import serves
from banditgate.errors import (
    BanditgateError,
    Conflict,
    InvalidInput,
    InvalidSpec,
    UnknownExperiment,
)
from banditgate.policy import build_policy, default_weights, normalise, validate_model
from banditgate.publish_check import Evaluation, PolicyRefused, evaluate, recent_examples
from banditgate.redis import Redis
from banditgate.registry import PolicyRegistry, PolicyVersion
from banditgate.spec import ExperimentSpec, parse_spec
from banditgate.store import ExperimentStore
from experiments.ledger import StatsBook
from experiments.stats import configured_weights

PAUSE_LOOKBACK_S = 300.0


class PreconditionFailed(BanditgateError):
    status = 412


class UnknownArm(BanditgateError):
    status = 404


class UnknownSpecVersion(BanditgateError):
    status = 404


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: objects merge, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def spec_document(spec: ExperimentSpec) -> dict[str, Any]:
    document: dict[str, Any] = orjson.loads(spec.to_json())
    return document


def status_of(override: dict[str, Any] | None) -> str:
    if override is None:
        return "running"
    if override.get("ended"):
        return "ended"
    if override.get("paused"):
        return "paused"
    return "running"


def check_weights(weights: Any, arms: list[str], field: str = "weights") -> dict[str, float]:
    if not isinstance(weights, dict) or not weights:
        raise InvalidInput(f"{field}: an object of arm -> weight", field=field)
    out: dict[str, float] = {}
    for arm, value in weights.items():
        path = f"{field}.{arm}"
        if arm not in arms:
            raise InvalidInput(f"{path}: unknown arm {arm!r}; arms are {arms}", field=path)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInput(f"{path}: a number", field=path)
        if not math.isfinite(value) or value < 0:
            raise InvalidInput(f"{path}: finite and non-negative", field=path)
        out[arm] = float(value)
    if sum(out.values()) <= 0:
        raise InvalidInput(f"{field}: weights must add up to a positive number", field=field)
    return {arm: out.get(arm, 0.0) for arm in arms}


def _arm_references(spec: ExperimentSpec, arm: str) -> list[str]:
    """Fields other than arms[] and weights that name the arm."""
    found: list[str] = []
    if spec.canary is not None:
        found += [f"canary.{f}" for f in ("baseline", "canary") if getattr(spec.canary, f) == arm]
    if spec.bluegreen is not None:
        found += [
            f"bluegreen.{f}" for f in ("active", "preview") if getattr(spec.bluegreen, f) == arm
        ]
    if spec.shadow is not None:
        if spec.shadow.primary == arm:
            found.append("shadow.primary")
        found += [f"shadow.shadows[{i}]" for i, s in enumerate(spec.shadow.shadows) if s == arm]
    if spec.ab is not None:
        found += [f"ab.rules[{i}].arm" for i, r in enumerate(spec.ab.rules) if r.arm == arm]
    return found


def _weighted(spec: ExperimentSpec) -> bool:
    return spec.mode == "ab" or spec.policy.learner == "static"


def _reweigh_add(document: dict[str, Any], spec: ExperimentSpec, arm_doc: dict[str, Any]) -> None:
    """Make room for the new arm's share in whichever weights the spec keeps."""
    if not _weighted(spec):
        return
    policy_weights = document.get("policy", {}).get("weights")
    arm_weights = any(a.get("weight") is not None for a in document["arms"])
    new_weight = arm_doc.get("weight")
    if new_weight is not None and (
        isinstance(new_weight, bool) or not isinstance(new_weight, int | float)
    ):
        return  # not a number: the spec validation names the field
    if policy_weights is None and not arm_weights:
        if new_weight is None:
            return  # an equal split stays an equal split
        for a in document["arms"]:
            a["weight"] = 100.0 / len(document["arms"])
    table = (
        dict(policy_weights)
        if policy_weights is not None
        else {a["name"]: float(a.get("weight") or 0.0) for a in document["arms"]}
    )
    total = sum(table.values())
    share = 1.0 / (len(table) + 1) if new_weight is None else float(new_weight) / total
    if not 0.0 <= share < 1.0:
        raise InvalidInput(
            f"weight: {new_weight} is not below the current total weight {total:g}", field="weight"
        )
    scaled = {name: w * (1.0 - share) for name, w in table.items()}
    scaled[arm_doc["name"]] = share * total
    if policy_weights is not None:
        document["policy"]["weights"] = scaled
        arm_doc.pop("weight", None)
    else:
        for a in document["arms"]:
            a["weight"] = scaled[a["name"]]
        arm_doc["weight"] = scaled[arm_doc["name"]]


def _reweigh_remove(document: dict[str, Any], spec: ExperimentSpec, arm: str) -> None:
    policy = document.get("policy", {})
    if policy.get("weights") is not None:
        table = dict(policy["weights"])
        removed = table.pop(arm, 0.0)
        policy["weights"] = _spread(table, removed, "policy.weights")
    if any(a.get("weight") is not None for a in document["arms"]) and _weighted(spec):
        table = {
            a["name"]: float(a.get("weight") or 0.0) for a in document["arms"] if a["name"] != arm
        }
        removed = next(
            (float(a.get("weight") or 0.0) for a in document["arms"] if a["name"] == arm), 0.0
        )
        spread = _spread(table, removed, "arms")
        for a in document["arms"]:
            if a["name"] != arm:
                a["weight"] = spread[a["name"]]
    document["arms"] = [a for a in document["arms"] if a["name"] != arm]


def _spread(table: dict[str, float], removed: float, field: str) -> dict[str, float]:
    remaining = sum(table.values())
    if remaining <= 0:
        raise Conflict(f"{field}: the remaining arms all have weight 0", field=field)
    scale = (remaining + removed) / remaining
    return {name: w * scale for name, w in table.items()}


class Lifecycle:
    def __init__(self, redis: Redis, stats: StatsBook) -> None:
        self.redis = redis
        self.store = ExperimentStore(redis)
        self.registry = PolicyRegistry(redis)
        self.stats = stats

    def locked(self, name: str) -> contextlib.AbstractAsyncContextManager[None]:
        return self.store.locked(name)

    async def _check_version(self, name: str, if_match: int | None) -> None:
        if if_match is None:
            return
        current = await self.store.version(name)
        if current != if_match:
            raise PreconditionFailed(
                f"experiment {name!r} is at spec version {current}, not {if_match}; reload, retry"
            )

    # -- specs ---------------------------------------------------------------------------------

    async def create(self, document: Any, *, reason: str = "api: create") -> dict[str, Any]:
        spec = parse_spec(document)
        async with self.locked(spec.name):
            if await self.store.find(spec.name) is not None:
                raise Conflict(
                    f"experiment {spec.name!r} exists; use PUT to replace it", field="name"
                )
            return await self.store.put(spec, reason=reason)

    async def apply(
        self, name: str, document: Any, *, if_match: int | None = None, reason: str = "api: apply"
    ) -> dict[str, Any]:
        """Create or replace (kubectl apply)."""
        if isinstance(document, dict):
            document.setdefault("name", name)
            if document["name"] != name:
                raise InvalidSpec(
                    f"name: {document['name']!r} does not match the URL's {name!r}", field="name"
                )
        spec = parse_spec(document)
        async with self.locked(name):
            await self._check_version(name, if_match)
            return await self.store.put(spec, reason=reason)

    async def patch(
        self, name: str, patch: Any, *, if_match: int | None = None, reason: str = "api: patch"
    ) -> dict[str, Any]:
        if not isinstance(patch, dict):
            raise InvalidSpec("a merge patch is a JSON object", field="(root)")
        if "name" in patch and patch["name"] != name:
            raise InvalidSpec("name: an experiment cannot be renamed", field="name")
        async with self.locked(name):
            current = await self.store.get(name)
            await self._check_version(name, if_match)
            spec = parse_spec(merge_patch(spec_document(current), patch))
            return await self.store.put(spec, reason=reason)

    async def delete(self, name: str, *, if_match: int | None = None) -> None:
        async with self.locked(name):
            await self._check_version(name, if_match)
            await self.store.delete(name)
        self.stats.forget(name)

    async def restore(self, name: str, version: int) -> dict[str, Any]:
        async with self.locked(name):
            entry = await self.spec_version(name, version)
            spec = parse_spec(entry["spec"])
            return await self.store.put(spec, reason=f"api: restore spec version {version}")

    async def spec_version(self, name: str, version: int) -> dict[str, Any]:
        await self.store.get(name)
        raw = (
            await self.redis.lindex(keys.spec_history(name), version - 1) if version >= 1 else None
        )
        if raw is None:
            raise UnknownSpecVersion(f"experiment {name!r} has no spec version {version}")
        entry: dict[str, Any] = orjson.loads(raw)
        return entry

    async def versions(self, name: str) -> list[dict[str, Any]]:
        await self.store.get(name)
        return [
            {k: v for k, v in entry.items() if k != "spec"}
            for entry in await self.store.history(name)
        ]

    # -- arms ----------------------------------------------------------------------------------

    async def add_arm(self, name: str, arm_doc: Any) -> dict[str, Any]:
        if not isinstance(arm_doc, dict):
            raise InvalidSpec("an arm is a JSON object", field="arms[-1]")
        async with self.locked(name):
            current = await self.store.get(name)
            if arm_doc.get("name") in current.arm_names:
                raise Conflict(f"arm {arm_doc['name']!r} exists", field="name")
            document = spec_document(current)
            arm_doc = dict(arm_doc)
            if isinstance(arm_doc.get("name"), str):
                _reweigh_add(document, current, arm_doc)
            document["arms"].append(arm_doc)
            spec = parse_spec(document)
            return await self.store.put(spec, reason=f"api: add arm {arm_doc.get('name')}")

    async def remove_arm(self, name: str, arm: str) -> dict[str, Any]:
        async with self.locked(name):
            current = await self.store.get(name)
            if arm not in current.arm_names:
                raise UnknownArm(f"experiment {name!r} has no arm {arm!r}", field="arm")
            if len(current.arms) == 1:
                raise Conflict(
                    f"{arm!r} is the last arm of {name!r}; delete the experiment instead"
                )
            references = _arm_references(current, arm)
            if references:
                raise Conflict(
                    f"arm {arm!r} is named by {', '.join(references)}; change those first",
                    field=references[0],
                )
            override = await self.store.get_override(name)
            document = spec_document(current)
            _reweigh_remove(document, current, arm)
            spec = parse_spec(document)
            remaining: dict[str, float] | None = None
            if override is not None and arm in override.get("weights", {}):
                remaining = {a: w for a, w in override["weights"].items() if a != arm}
                if sum(remaining.values()) <= 0:
                    raise Conflict(
                        f"arm {arm!r} carries all of the traffic set by the current weights "
                        f"({override.get('reason')}); resume or end with another arm first",
                        field="weights",
                    )
            entry = await self.store.put(spec, reason=f"api: remove arm {arm}")
            if override is not None and remaining is not None:
                await self._set_override(name, remaining, override)
            return entry

    async def _set_override(
        self, name: str, weights: dict[str, float], like: dict[str, Any]
    ) -> dict[str, Any] | None:
        extra = {
            k: v for k, v in like.items() if k not in {"weights", "reason", "ts_ms", "revision"}
        }
        return await self.store.set_override(
            name, weights, reason=like.get("reason", "api"), **extra
        )

    # -- traffic -------------------------------------------------------------------------------

    async def pause(self, name: str, weights: Any = None) -> dict[str, Any]:
        """Freeze traffic at static weights (given, or the split the experiment serves now)."""
        async with self.locked(name):
            spec = await self.store.get(name)
            override = await self.store.get_override(name)
            if weights is not None:
                frozen = check_weights(weights, spec.arm_names)
            elif override is not None:
                if override.get("paused") or override.get("ended"):
                    return override
                frozen = dict(override["weights"])
            else:
                frozen = await self._current_split(spec)
            previous = override
            if override is not None and (override.get("paused") or override.get("ended")):
                previous = override.get("previous")
            record = await self.store.set_override(
                name, frozen, reason="pause", paused=True, previous=previous
            )
            assert record is not None
            return record

    async def _current_split(self, spec: ExperimentSpec) -> dict[str, float]:
        configured = configured_weights(spec, None)
        if configured is not None:
            return configured
        async with self.stats.open(spec) as ledger:
            recent = ledger.merged(int(time.time() * 1000 - PAUSE_LOOKBACK_S * 1000))
            if recent.randomized == 0:
                recent = ledger.merged()
        if recent.randomized == 0:
            return dict(
                zip(spec.arm_names, normalise(list(default_weights(spec).values())), strict=True)
            )
        shares = [recent.arms[a].action_p if a in recent.arms else 0.0 for a in spec.arm_names]
        return dict(zip(spec.arm_names, normalise(shares), strict=True))

    async def resume(self, name: str) -> dict[str, Any] | None:
        """Undo pause or end: back to the weights before them (or the mode's own allocation)."""
        async with self.locked(name):
            await self.store.get(name)
            override = await self.store.get_override(name)
            if override is None or not (override.get("paused") or override.get("ended")):
                raise Conflict(f"experiment {name!r} is neither paused nor ended")
            previous = override.get("previous")
            if previous is None:
                return await self.store.set_override(name, None, reason="resume")
            return await self._set_override(name, previous["weights"], previous)

    async def end(self, name: str, winner: Any) -> dict[str, Any]:
        """All traffic to the winner, until resumed."""
        async with self.locked(name):
            spec = await self.store.get(name)
            if not isinstance(winner, str) or winner not in spec.arm_names:
                raise InvalidInput(
                    f"winner: {winner!r} is not an arm; arms are {spec.arm_names}", field="winner"
                )
            override = await self.store.get_override(name)
            previous = override
            if override is not None and (override.get("paused") or override.get("ended")):
                previous = override.get("previous")
            weights = {arm: 1.0 if arm == winner else 0.0 for arm in spec.arm_names}
            record = await self.store.set_override(
                name,
                weights,
                reason=f"end: winner {winner}",
                ended=True,
                winner=winner,
                previous=previous,
            )
            assert record is not None
            return record

    # -- policies ------------------------------------------------------------------------------

    async def policies(self, name: str) -> dict[str, Any]:
        await self.store.get(name)
        versions = await self.registry.versions(name)
        return {
            "current": await self.registry.current_version(name),
            "versions": [_policy_dict(v) for v in versions],
            "history": await self.registry.history(name),
        }

    async def activate_policy(
        self, name: str, version: int, reason: str | None = None, *, force: bool = False
    ) -> dict[str, Any]:
        """Serve `version` again (a rollback when it is older); the registry checks it fits,
        and the off-policy check refuses it, unless `force`, when significantly worse."""
        async with self.locked(name):
            spec = await self.store.get(name)
            record = await self.registry.get(name, version)
            check = None
            if version != await self.registry.current_version(name):
                model = await self.registry.model(name, version)
                check = await self._check_publish(spec, model, force=force)
            record = await self.registry.activate(
                name, version, reason or f"api: activate {version}{_forced(check, force)}"
            )
        return {
            "current": version,
            "version": _policy_dict(record),
            "check": check.to_dict() if check else None,
        }

    async def publish_policy(
        self,
        name: str,
        model: bytes,
        *,
        source: str = "manual",
        note: str = "",
        ope: dict[str, Any] | None = None,
        n_examples: int = 0,
        activate: bool = True,
        force: bool = False,
    ) -> dict[str, Any]:
        """A model from outside the trainer (CLI, warm start, API): the one way in for it.

        The registry validates it against the spec. It did not pass the trainer's gate, so
        it is evaluated off-policy against the serving policy on recent joined examples
        (banditgate.publish_check) and refused, unless `force`, when significantly worse.
        Nothing is written when it is refused.
        """
        async with self.locked(name):
            spec = await self.store.get(name)
            check = await self._check_publish(spec, model, force=force)
            numbers = dict(ope) if ope else dict(check.numbers)
            numbers["publish_check"] = {
                k: v for k, v in check.to_dict().items() if k not in ("numbers", "report")
            } | {"forced": check.refused and force}
            record = await self.registry.publish(
                name,
                model,
                parent=await self.registry.current_version(name),
                n_examples=n_examples,
                source=source,
                ope=numbers,
                note=note + _forced(check, force),
                activate=activate,
            )
            current = await self.registry.current_version(name)
        return {"current": current, "version": _policy_dict(record), "check": check.to_dict()}

    async def _check_publish(
        self, spec: ExperimentSpec, model: bytes, *, force: bool
    ) -> Evaluation:
        candidate = await asyncio.to_thread(validate_model, spec, model)
        version, serving_model = await self.registry.load_current(spec.name)
        if version and not serves(spec, (await self.registry.get(spec.name, version)).learner):
            version, serving_model = 0, None  # routers serve the cold-start policy then
        serving = await asyncio.to_thread(build_policy, spec, serving_model, version)
        examples = await recent_examples(self.redis, spec)
        check = await asyncio.to_thread(
            evaluate, spec, candidate, serving, examples, current_version=version
        )
        if check.refused and not force:
            raise PolicyRefused(check)
        return check

    # -- reading -------------------------------------------------------------------------------

    async def describe(self, name: str) -> dict[str, Any]:
        spec = await self.store.get(name)
        history_key = keys.spec_history(name)
        version = int(await self.redis.llen(history_key))
        first, last = (
            await self.redis.lindex(history_key, 0),
            await self.redis.lindex(history_key, -1),
        )
        override = await self.store.get_override(name)
        status = status_of(override)
        return {
            "name": name,
            "spec": spec_document(spec),
            "version": version,
            "created_ms": orjson.loads(first)["ts_ms"] if first else None,
            "updated_ms": orjson.loads(last)["ts_ms"] if last else None,
            "status": status,
            "winner": (override or {}).get("winner") if status == "ended" else None,
            "override": override,
            "policy_version": await self.registry.current_version(name),
        }

    async def summaries(self) -> list[dict[str, Any]]:
        out = []
        for name in await self.store.names():
            try:
                described = await self.describe(name)
            except UnknownExperiment:
                continue  # deleted while listing
            spec = described.pop("spec")
            out.append(
                {
                    **{k: v for k, v in described.items() if k != "override"},
                    "mode": spec["mode"],
                    "arms": [a["name"] for a in spec["arms"]],
                    "description": spec.get("description", ""),
                }
            )
        return out


def _forced(check: Evaluation | None, force: bool) -> str:
    if check is not None and check.refused and force:
        return f" [forced past the off-policy check: {check.reason}]"
    return ""


def _policy_dict(record: PolicyVersion) -> dict[str, Any]:
    out: dict[str, Any] = orjson.loads(record.to_json())
    return out
