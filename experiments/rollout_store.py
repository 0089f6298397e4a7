"""Rollout state in Redis: optimistic transactions, and the weights override that follows it.

The state key is the source of truth for a canary or blue/green experiment; the
weights override (ExperimentStore.set_override, which every router reloads on
its announcement) is derived from it. Every change is a WATCH/MULTI transaction
on the state and the spec, so the controller and manual API calls never lose
each other's writes. The override is written after the state; if that second
write is lost, the next controller tick writes it again (level-triggered).
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
from banditgate.errors import Conflict, InvalidInput
from banditgate.policy import default_weights
from banditgate.redis import Redis
from banditgate.spec import ExperimentSpec, parse_spec
from banditgate.store import ExperimentStore, override_applies
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
        """Apply `change` to the stored state atomically (retried when someone else wrote first)."""
        state_key, spec_key = keys.rollout_state(name), keys.spec(name)
        for _ in range(MAX_ATTEMPTS):
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(state_key, spec_key)
                    raw_spec = await pipe.get(spec_key)
                    if raw_spec is None:
                        spec = await self.specs.get(name)  # raises UnknownExperiment
                    else:
                        spec = parse_spec(orjson.loads(raw_spec))
                    raw = await pipe.get(state_key)
                    before = RolloutState.from_dict(orjson.loads(raw)) if raw is not None else None
                    after = await change(before, spec)
                    if after is not None and (
                        before is None or after.to_dict() != before.to_dict()
                    ):
                        pipe.multi()
                        pipe.set(state_key, orjson.dumps(after.to_dict()))
                        await pipe.execute()
                    else:
                        await pipe.unwatch()
                except WatchError:
                    continue
            await self.sync_weights(spec, after)
            return after, spec
        raise Conflict(f"rollout state of {name!r} kept changing; try again")

    def desired_override(
        self, spec: ExperimentSpec, state: RolloutState | None
    ) -> dict[str, Any] | None:
        plan = Plan.from_spec(spec)
        if plan is not None:
            if state is None or not current(state, plan):
                return None
            return {"weights": state.weights, "mode": spec.mode, "target": list(plan.target)}
        return None

    async def sync_weights(self, spec: ExperimentSpec, state: RolloutState | None) -> None:
        """Make the routers' override match a canary or blue/green rollout's weights."""
        desired = self.desired_override(spec, state)
        if desired is None or state is None:
            return
        existing = await self.specs.get_override(spec.name)
        if existing is not None and all(existing.get(k) == v for k, v in desired.items()):
            return
        reason = state.history[-1]["reason"] if state.history else state.message
        await self.specs.set_override(
            spec.name,
            desired["weights"],
            reason=reason,
            mode=desired["mode"],
            target=desired["target"],
            source="rollout",
            phase=state.phase,
        )
        log.info("experiment %s: weights %s (%s)", spec.name, desired["weights"], reason)

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
        shares: dict[str, float] = {}

        async def change(state: RolloutState | None, spec: ExperimentSpec) -> RolloutState:
            shares.clear()
            shares.update(percentages(_checked(spec, weights)))
            plan = Plan.from_spec(spec)
            if plan is not None:
                state = reconcile(state, plan, now=now, mark_ms=mark)
            return set_weights(state, plan, spec.mode, shares, now=now, reason=reason)

        state, spec = await self.update(name, change)
        if Plan.from_spec(spec) is None:
            # Outside canary and blue/green the override itself is the record.
            await self.specs.set_override(
                name, shares, reason=reason or "weights set by hand", mode=spec.mode, source="api"
            )
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
        await self.specs.set_override(name, None, reason=reason or "weights cleared by hand")
        return await self.view(name)

    async def view(
        self,
        name: str,
        *,
        spec: ExperimentSpec | None = None,
        state: RolloutState | None = None,
    ) -> dict[str, Any]:
        spec = spec or await self.specs.get(name)
        if state is None:
            state = await self.load(name)
        plan = Plan.from_spec(spec)
        history = state.history if state is not None else []
        out: dict[str, Any] = {"experiment": name, "mode": spec.mode}
        if plan is None:
            override = await self.specs.get_override(name)
            if override_applies(spec, override):
                assert override is not None
                phase, weights = "Static", percentages(override["weights"])
            else:
                phase = "Learning" if spec.mode == "bandit" else "Static"
                weights = _mode_weights(spec)
            out.update(phase=phase, weights=weights, message=state.message if state else "")
            out["history"] = history
            return out
        if state is None or not current(state, plan):
            out.update(
                phase="Pending",
                weights=plan.on_baseline,
                baseline=plan.baseline,
                candidate=plan.candidate,
                message="waiting for the rollout controller",
                history=history,
            )
            return out
        out.update(
            phase=state.phase,
            weights=state.weights,
            baseline=state.baseline,
            candidate=state.candidate,
            message=state.message,
            paused_by=state.paused_by,
            next_check_ts_ms=_ms(state.due_s),
        )
        if plan.mode == "canary":
            out.update(step=state.step + 1, steps=list(plan.steps))
        else:
            out.update(
                switched_ts_ms=_ms(state.switched_s),
                release_ts_ms=_ms(state.release_s),
                released=state.released,
            )
        out["history"] = history
        return out


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
