"""What a router knows about each experiment, kept current from Redis announcements.

When Redis comes back empty (restarted without persistence), a resync finds no specs.
Deleted experiments are announced one by one; an empty store without the data marker
(`keys.DATA_MARKER`, set by every router) means the data was lost instead: the router
keeps serving what it holds and writes its specs and active policies back (under each
experiment's control lock, only where still missing), so every component recovers.

The experiment watcher (banditgate/watcher.py) keeps the served specs; on each change it
reports, the runtime loads the policy and the weights override on top.

A change builds a new state object (models load in a worker thread), then one
dict assignment swaps it in: requests in flight finish on the state they read.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter

from banditgate import keys
from banditgate.auto import serves
from banditgate.contracts import Announced
from banditgate.errors import UnknownExperiment
from banditgate.featurize import Featurizer
from banditgate.policy import ActionSet, Policy, StaticPolicy, build_policy, default_weights
from banditgate.redis import Redis
from banditgate.registry import PolicyRegistry
from banditgate.spec import Arm, ExperimentSpec
from banditgate.store import override_applies
from banditgate.watcher import ExperimentWatcher
from router.capture import CapturePlan
from router.shadow import ShadowPlan

log = logging.getLogger(__name__)


@dataclass
class ExperimentState:
    spec: ExperimentSpec
    featurizer: Featurizer
    actions: ActionSet
    arms: dict[str, Arm]
    policy: Policy
    override: dict[str, Any] | None = None
    static: StaticPolicy | None = None
    index_ttl_s: int = 3600
    loaded_version: int = 0
    reads_body: bool = False
    shadow: ShadowPlan | None = None
    capture: CapturePlan | None = None
    model: bytes | None = None  # the active policy's model, to write back if Redis loses it
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def learned(self) -> bool:
        return self.spec.mode == "bandit" and self.override is None


def _reads_body(spec: ExperimentSpec) -> bool:
    if spec.context.body or spec.context.text:
        return True
    ab = spec.ab
    if spec.mode != "ab" or ab is None:
        return False
    return any(rule.body for rule in ab.rules) or bool(ab.sticky and ab.sticky.body)


def _static_for(spec: ExperimentSpec, override: dict[str, Any] | None) -> StaticPolicy | None:
    if override is not None:
        return StaticPolicy(override["weights"], int(override.get("revision", 0)))
    if spec.mode == "ab":
        return StaticPolicy(default_weights(spec), 0)
    return None


def build_state(
    spec: ExperimentSpec, policy: Policy, version: int, override: dict[str, Any] | None
) -> ExperimentState:
    reward = spec.reward
    if not override_applies(spec, override):
        override = None
    return ExperimentState(
        spec=spec,
        featurizer=Featurizer(spec.context),
        actions=ActionSet.from_spec(spec),
        arms={arm.name: arm for arm in spec.arms},
        policy=policy,
        override=override,
        static=_static_for(spec, override),
        index_ttl_s=int(reward.window_s + reward.backward_window_s + 600),
        loaded_version=version,
        reads_body=_reads_body(spec),
        shadow=ShadowPlan.from_spec(spec.shadow) if spec.mode == "shadow" and spec.shadow else None,
        capture=CapturePlan.from_spec(spec.capture) if spec.capture is not None else None,
    )


class Runtime:
    """The served experiments' states; specs come from the watcher, which calls `changed`."""

    def __init__(
        self, redis: Redis, *, only: list[str] | None = None, swaps: Counter | None = None
    ) -> None:
        """`swaps`: counts each policy swapped in, beside `self.swaps`."""
        self.redis = redis
        self._swap_counter = swaps
        self.watcher = ExperimentWatcher(redis, only=only, on_change=self.changed)
        self.store = self.watcher.store
        self.registry = PolicyRegistry(redis)
        self.experiments: dict[str, ExperimentState] = {}
        self.synced = asyncio.Event()
        self.swaps = 0
        self._lock = asyncio.Lock()

    def serves(self, name: str) -> bool:
        return self.watcher.serves(name)

    def get(self, name: str) -> ExperimentState:
        state = self.experiments.get(name)
        if state is None:
            raise UnknownExperiment(name)
        return state

    @property
    def ready(self) -> bool:
        return self.synced.is_set()

    async def sync_all(self) -> None:
        """Load every served experiment from the watcher's specs (after each resync)."""
        async with self._lock:
            specs = self.watcher.specs
            if any(name not in specs for name in self.experiments):
                try:
                    await self._restore_lost()
                    # Read again: another router may have just written them back.
                    specs = await self.watcher.sync()
                except Exception:  # Redis away again: keep serving, the next resync retries
                    log.exception("writing back the served experiments failed")
                    specs = {**{n: s.spec for n, s in self.experiments.items()}, **specs}
            for name in specs:
                if name not in self.watcher.specs:
                    continue  # kept from before: Redis lost it and could not be written to
                try:
                    await self._reload(name)
                except Exception:  # one unreadable experiment must not stop the others
                    log.exception("loading experiment %s failed; it is not served", name)
            for name in list(self.experiments):
                if name not in specs:
                    self.experiments.pop(name, None)
        self.synced.set()

    async def mark(self) -> None:
        """Say this Redis holds banditgate's data (see the module docstring)."""
        await self.redis.set(keys.DATA_MARKER, "1")

    async def _restore_lost(self) -> bool:
        """Write back served specs and policies if Redis lost its data; True if it did."""
        if await self.redis.exists(keys.DATA_MARKER):
            return False  # the data is there: experiments missing from it were deleted
        restored = 0
        for name, state in list(self.experiments.items()):
            async with self.store.locked(name):
                if await self.store.find(name) is None:
                    await self.store.put(state.spec, reason="restored by a router: Redis lost it")
                    restored += 1
            if state.model is not None and await self.registry.current_version(name) is None:
                await self.registry.publish(
                    name,
                    state.model,
                    learner=state.spec.policy.learner,
                    source="router-restore",
                    note=f"version {state.loaded_version} before Redis lost its data",
                )
            if state.override is not None and await self.store.get_override(name) is None:
                log.warning("experiment %s: its weights override was lost with Redis", name)
        await self.mark()
        log.warning("Redis had lost its data: %d experiments written back", restored)
        return True

    async def changed(self, name: str | None, kind: str) -> None:
        """The watcher's news: a resync (name None), or one experiment's announcement."""
        if name is None:
            await self.sync_all()
            return
        async with self._lock:
            try:
                if kind == Announced.DELETED:
                    self.experiments.pop(name, None)
                else:
                    await self._reload(name)
            except Exception:
                log.exception("reloading experiment %s after %s announcement failed", name, kind)

    async def _reload(self, name: str) -> None:
        """Build the state of one experiment from its current spec, policy and override."""
        current = self.experiments.get(name)
        spec = self.watcher.specs.get(name)
        if spec is None:
            self.experiments.pop(name, None)
            return
        version, model = await self.registry.load_current(name)
        if version and not serves(spec, (await self.registry.get(name, version)).learner):
            log.warning(
                "experiment %s: policy %d is for another learner; cold start", name, version
            )
            version, model = 0, None
        override = await self.store.get_override(name)
        same_learner = current is not None and current.spec.policy.learner == spec.policy.learner
        if current is not None and same_learner and current.loaded_version == version:
            policy = current.policy
        else:
            policy = await asyncio.to_thread(build_policy, spec, model, version)
            if current is not None:
                self.swaps += 1
                if self._swap_counter is not None:
                    self._swap_counter.inc()
                log.info("experiment %s: policy %d -> %d", name, current.loaded_version, version)
        state = build_state(spec, policy, version, override)
        state.model = model if version else None
        self.experiments[name] = state
