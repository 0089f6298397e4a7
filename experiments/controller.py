"""The rollout controller: drives every canary and blue/green experiment, one tick at a time.

Several controllers may run (one per control-plane process); per experiment,
only the holder of a Redis lock with expiry acts, and renews the lock each tick.
If it dies, the lock expires and another takes over from the stored state. The
state is also written with optimistic transactions, so even a controller that
lost its lock without noticing cannot overwrite a newer state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

from pydantic import Field

from banditgate import keys
from banditgate.locks import OwnerLocks
from banditgate.redis import Redis
from banditgate.settings import CoreSettings
from banditgate.spec import ExperimentSpec
from banditgate.tasks import TaskGroup
from banditgate.watcher import ExperimentWatcher
from experiments import guardrails
from experiments.rollout import Plan, RolloutState, due, evaluate, expire, reconcile
from experiments.rollout_store import Clock, RolloutStore

log = logging.getLogger(__name__)


class ControllerSettings(CoreSettings):
    rollout_tick_s: float = Field(default=1.0, description="Seconds between controller ticks.")
    rollout_lock_ttl_s: float = Field(
        default=15.0, description="Lock expiry; another controller takes over after this."
    )


class Controller:
    def __init__(
        self,
        *,
        redis: Redis,
        clock: Clock = time.time,
        owner: str | None = None,
        lock_ttl_s: float = 15.0,
        tick_s: float = 1.0,
        experiments: list[str] | None = None,
    ) -> None:
        """`clock` gives seconds (tests pass a fake one); `owner` names this controller in locks."""
        self.redis = redis
        self.clock = clock
        self.owner = owner or f"controller-{uuid.uuid4().hex[:12]}"
        self.lock_ttl_ms = int(lock_ttl_s * 1000)
        self.tick_s = tick_s
        self.watcher = ExperimentWatcher(redis, only=experiments)
        self.rollouts = RolloutStore(redis, clock=clock)
        self.held: set[str] = set()
        self.locks = OwnerLocks(redis, owner=self.owner, ttl_ms=self.lock_ttl_ms)

    async def run_once(self) -> dict[str, str]:
        """One tick over every rollout experiment: experiment -> its phase, or "locked"."""
        outcome: dict[str, str] = {}
        specs = await self.watcher.current()
        for name in self.held - specs.keys():  # deleted experiments
            await self.release(name)
        for name, spec in specs.items():
            if Plan.from_spec(spec) is None:
                if name in self.held:
                    await self.release(name)
                continue
            if not await self.lock(name):
                outcome[name] = "locked"
                continue
            try:
                state = await self.tick(name)
            except Exception:
                log.exception("rollout of %s: tick failed", name)
                outcome[name] = "failed"
                continue
            outcome[name] = state.phase if state is not None else "none"
        return outcome

    async def tick(self, name: str) -> RolloutState | None:
        async def change(state: RolloutState | None, spec: ExperimentSpec) -> RolloutState | None:
            plan = Plan.from_spec(spec)
            if plan is None:
                return state
            now, mark = self.clock(), await self.rollouts.mark_ms()
            state = reconcile(state, plan, now=now, mark_ms=mark)
            state = expire(state, plan, now)
            window = due(state, plan, now)
            if window is None:
                return state
            rewards = plan.guardrails.min_reward_delta is not None
            measured = await guardrails.collect(
                self.redis, name, since_ms=window.since_ms, arms=plan.target, rewards=rewards
            )
            reference = None
            if window.reference_range_ms is not None:
                low, high = window.reference_range_ms
                reference = await guardrails.collect(
                    self.redis, name, since_ms=low, until_ms=high, arms=plan.target, rewards=rewards
                )
            before = state.phase
            state = evaluate(
                state, plan, now=now, mark_ms=mark, window=measured, reference=reference
            )
            if state.phase != before:
                log.info("rollout of %s: %s -> %s: %s", name, before, state.phase, state.message)
            return state

        state, _ = await self.rollouts.update(name, change)
        return state

    async def lock(self, name: str) -> bool:
        held = await self.locks.hold(keys.rollout_lock(name))
        if held:
            self.held.add(name)
        else:
            self.held.discard(name)
        return held

    async def release(self, name: str) -> None:
        self.held.discard(name)
        await self.locks.release(keys.rollout_lock(name))

    async def close(self) -> None:
        """Hand every lock back, so another controller takes over without waiting for expiry."""
        for name in list(self.held):
            try:
                await self.release(name)
            except Exception:
                log.warning("could not release the rollout lock of %s", name, exc_info=True)

    async def run(self, stop: asyncio.Event) -> None:
        watching = TaskGroup("controller")
        watching.spawn(self.watcher.watch(), "announcements")
        try:
            while not stop.is_set():
                try:
                    await self.run_once()
                except Exception:
                    log.exception("rollout controller tick failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.tick_s)
        finally:
            await watching.cancel_all()
            await self.close()


async def run(redis: Redis, *, stop: asyncio.Event) -> None:
    settings = ControllerSettings()
    controller = Controller(
        redis=redis,
        tick_s=settings.rollout_tick_s,
        lock_ttl_s=settings.rollout_lock_ttl_s,
        experiments=settings.experiments,
    )
    log.info("rollout controller %s started", controller.owner)
    await controller.run(stop)
