"""Rollout state in Redis: optimistic transactions, and the weights override that follows it.

The state key is the source of truth for a canary or blue/green experiment; the
weights override (the record ExperimentStore.set_override writes, which every
router reloads on its announcement) is derived from it. Every change is one
WATCH/MULTI transaction over the state, the spec and the override, so the
controller and manual API calls never lose each other's writes and the routers
never see weights the state does not hold. Each controller tick also rewrites
an override that someone changed behind the rollout's back (level-triggered).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from redis.exceptions import WatchError

from banditgate import keys
from banditgate.announce import AfterCommit
from banditgate.contracts import Announced
from banditgate.errors import Conflict, InvalidInput, UnknownExperiment
from banditgate.policy import default_weights
from banditgate.redis import Redis
from banditgate.spec import ExperimentSpec, parse_spec
from banditgate.store import ExperimentStore, override_applies, override_record
from experiments.rollout import (
    HISTORY_LIMIT,
    Action,
    Phase,
    Plan,
    RolloutState,
    act,
    current,
    reconcile,
    set_weights,
)

log = logging.getLogger(__name__)

Change = Callable[[RolloutState | None, ExperimentSpec], Awaitable[RolloutState | None]]
Clock = Callable[[], float]

MAX_ATTEMPTS = 20


def percentages(weights: dict[str, float]) -> dict[str, float]:
    total = sum(weights.values())
    return {name: round(100.0 * w / total, 6) for name, w in weights.items()}


class RolloutStore:
    def __init__(self, redis: Redis, *, clock: Clock = time.time) -> None:
        self.redis = redis
        self.clock = clock
        self.specs = ExperimentStore(redis)

    async def mark_ms(self) -> int:
        """Now on the streams' clock (the Redis server's), where a metrics window starts."""
        seconds, micros = await self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    async def load(self, name: str) -> RolloutState | None:
        raw = await self.redis.get(keys.rollout_state(name))
        return RolloutState.from_dict(orjson.loads(raw)) if raw is not None else None

    async def update(self, name: str, change: Change) -> tuple[RolloutState | None, ExperimentSpec]:
        """Apply `change` to the stored state, and the override to match, in one transaction.

        Retried when someone else wrote the state, the spec or the override first.
        """
        state_key, spec_key, weights_key = (
            keys.rollout_state(name),
            keys.spec(name),
            keys.weights(name),
        )
        for _ in range(MAX_ATTEMPTS):
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(state_key, spec_key, weights_key)
                    raw_spec = await pipe.get(spec_key)
                    if raw_spec is None:
                        raise UnknownExperiment(name)
                    spec = parse_spec(orjson.loads(raw_spec))
                    raw = await pipe.get(state_key)
                    before = RolloutState.from_dict(orjson.loads(raw)) if raw is not None else None
                    raw_override = await pipe.get(weights_key)
                    override = orjson.loads(raw_override) if raw_override is not None else None
                    after = await change(before, spec)
                    changed = after is not None and (
                        before is None or after.to_dict() != before.to_dict()
                    )
                    desired = desired_override(spec, after)
                    stale = not isinstance(desired, _Keep) and not _matches(override, desired)
                    if not (changed or stale):
                        await pipe.unwatch()
                        return after, spec
                    later = AfterCommit(self.redis)
                    pipe.multi()
                    if changed:
                        assert after is not None
                        pipe.set(state_key, orjson.dumps(after.to_dict()))
                    if stale:
                        assert after is not None
                        reason = after.history[-1]["reason"] if after.history else after.message
                        if desired is None:
                            pipe.delete(weights_key)
                        else:
                            assert isinstance(desired, dict)
                            weights = desired.pop("weights")
                            record = override_record(override, weights, reason=reason, **desired)
                            pipe.set(weights_key, orjson.dumps(record))
                        later.add(pipe, name, Announced.WEIGHTS)
                    await pipe.execute()
                    await later.send()
                except WatchError:
                    continue
            if stale:
                log.info("experiment %s: weights %s (%s)", name, after and after.weights, reason)
            return after, spec
        raise Conflict(f"rollout state of {name!r} kept changing; try again")

    async def act(self, name: str, action: Action, *, reason: str | None = None) -> dict[str, Any]:
        now, mark = self.clock(), await self.mark_ms()

        async def change(state: RolloutState | None, spec: ExperimentSpec) -> RolloutState:
            plan = Plan.from_spec(spec)
            if plan is None:
                raise Conflict(
                    f"experiment {name!r} is in mode {spec.mode!r}; rollout actions need "
                    "mode canary or bluegreen"
                )
            started = reconcile(state, plan, now=now, mark_ms=mark)
            return act(started, plan, action, now=now, mark_ms=mark, reason=reason)

        state, spec = await self.update(name, change)
        return await self.view(name, spec=spec, state=state)

    async def set_weights(
        self, name: str, weights: dict[str, float], *, reason: str | None = None
    ) -> dict[str, Any]:
        """Weights by hand (the weights API), in any mode; a rollout in progress pauses."""
        now, mark = self.clock(), await self.mark_ms()

        async def change(state: RolloutState | None, spec: ExperimentSpec) -> RolloutState:
            shares = percentages(_checked(spec, weights))
            plan = Plan.from_spec(spec)
            if plan is not None:
                state = reconcile(state, plan, now=now, mark_ms=mark)
            return set_weights(state, plan, spec.mode, shares, now=now, reason=reason)

        state, spec = await self.update(name, change)
        return await self.view(name, spec=spec, state=state)

    async def clear_weights(self, name: str, *, reason: str | None = None) -> dict[str, Any]:
        """Back to the mode's own allocation (ab: the spec's weights; bandit: the policy)."""
        spec = await self.specs.get(name)
        if Plan.from_spec(spec) is not None:
            raise Conflict(
                "a canary or blue/green rollout owns this experiment's weights; "
                "use the rollout actions (resume, promote, abort, rollback)"
            )
        now = self.clock()

        async def change(state: RolloutState | None, spec: ExperimentSpec) -> RolloutState:
            phase: Phase = "Learning" if spec.mode == "bandit" else "Static"
            why = f"weights cleared by hand: {reason}" if reason else "weights cleared by hand"
            history = state.history if state is not None else []
            entry = {
                "ts_ms": int(now * 1000),
                "phase": phase,
                "weights": _mode_weights(spec),
                "reason": why,
            }
            return RolloutState(
                mode=spec.mode,
                phase=phase,
                weights={},
                message=why,
                history=[*history, entry][-HISTORY_LIMIT:],
            )

        await self.update(name, change)
        return await self.view(name)

    async def view(
        self,
        name: str,
        *,
        spec: ExperimentSpec | None = None,
        state: RolloutState | None = None,
    ) -> dict[str, Any]:
        """The rollout as the API shows it; every key is always present (null when n/a)."""
        spec = spec or await self.specs.get(name)
        if state is None:
            state = await self.load(name)
        plan = Plan.from_spec(spec)
        out: dict[str, Any] = {
            "experiment": name,
            "mode": spec.mode,
            "phase": "Pending",
            "weights": {},
            "message": "",
            "baseline": None,
            "candidate": None,
            "step": None,
            "steps": None,
            "paused_by": None,
            "next_check_ts_ms": None,
            "switched_ts_ms": None,
            "release_ts_ms": None,
            "released": None,
            "history": state.history if state is not None else [],
        }
        if plan is None:
            override = await self.specs.get_override(name)
            if override_applies(spec, override):
                assert override is not None
                out.update(phase="Static", weights=percentages(override["weights"]))
            else:
                phase = "Learning" if spec.mode == "bandit" else "Static"
                out.update(phase=phase, weights=_mode_weights(spec))
            out["message"] = state.message if state is not None else ""
            return out
        out.update(baseline=plan.baseline, candidate=plan.candidate)
        if plan.mode == "canary":
            out["steps"] = list(plan.steps)
        if state is None or not current(state, plan):
            out.update(weights=plan.on_baseline, message="waiting for the rollout controller")
            return out
        out.update(
            phase=state.phase,
            weights=state.weights,
            message=state.message,
            paused_by=state.paused_by,
            next_check_ts_ms=_ms(state.due_s),
        )
        if plan.mode == "canary":
            out["step"] = state.step + 1
        else:
            out.update(
                switched_ts_ms=_ms(state.switched_s),
                release_ts_ms=_ms(state.release_s),
                released=state.released,
            )
        return out


class _Keep:
    """Leave the override as it is."""


KEEP = _Keep()


def desired_override(
    spec: ExperimentSpec, state: RolloutState | None
) -> dict[str, Any] | _Keep | None:
    """The override the routers should have for this state: a record's fields, None, or KEEP."""
    plan = Plan.from_spec(spec)
    if plan is not None:
        if state is None or not current(state, plan):
            return KEEP  # the controller has not started this rollout yet
        return {
            "weights": state.weights,
            "mode": spec.mode,
            "target": list(plan.target),
            "source": "rollout",
        }
    if state is None or state.mode != spec.mode:
        return KEEP
    if state.weights:
        return {"weights": state.weights, "mode": spec.mode, "source": "api"}
    return None


def _matches(override: dict[str, Any] | None, desired: dict[str, Any] | None) -> bool:
    if override is None or desired is None:
        return override is desired
    return all(override.get(k) == v for k, v in desired.items())


def _ms(seconds: float | None) -> int | None:
    return int(seconds * 1000) if seconds is not None else None


def _mode_weights(spec: ExperimentSpec) -> dict[str, float]:
    """What routers do without an override, as percentages."""
    if spec.mode == "ab":
        return percentages(default_weights(spec))
    if spec.mode == "shadow" and spec.shadow is not None:
        return {spec.shadow.primary: 100.0}
    if spec.mode == "canary" and spec.canary is not None:
        return {spec.canary.baseline: 100.0}
    if spec.mode == "bluegreen" and spec.bluegreen is not None:
        return {spec.bluegreen.active: 100.0}
    return {}


def _checked(spec: ExperimentSpec, weights: dict[str, float]) -> dict[str, float]:
    known = set(spec.arm_names)
    for name, weight in weights.items():
        if name not in known:
            raise InvalidInput(f"unknown arm {name!r}; arms are {sorted(known)}", field=name)
        if not math.isfinite(weight) or weight < 0:
            raise InvalidInput("weights are finite and non-negative", field=name)
    if sum(weights.values()) <= 0:
        raise InvalidInput("weights must add up to a positive number", field="weight")
    return {name: float(weights.get(name, 0.0)) for name in spec.arm_names}
