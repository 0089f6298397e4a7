"""The trainer: joined examples in, gated policy versions out.

Per experiment (one active trainer each, by a lock with expiry):

1. Read the joined stream with the consumer group `trainer`.
2. Hand each example to the experiment's `TrainingLoop` (trainer/loop.py): the
   challenger (a frozen snapshot of the learner) and the serving policy score it
   before the learner learns it.
3. Every `policy.update.every_events` examples or `every_s` seconds, the gate
   judges the challenger (IPS, SNIPS, DR with 95% intervals) and it is published
   if it passes. Every verdict is recorded with its numbers.
4. Checkpoint: the learner's full state and the acknowledgement of every example
   it contains are written in one transaction, so a crash re-delivers exactly the
   examples the saved state has not seen. Nothing is learned twice or skipped.

Learning happens in every mode (an A/B test's traffic warms the bandit up);
publishing only in bandit mode with a learning learner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import orjson

from banditgate import keys
from banditgate.auto import serves
from banditgate.contracts import TRAINER_CHANGES, TRAINER_GROUP
from banditgate.errors import InvalidPolicy
from banditgate.events import decode_joined
from banditgate.locks import OwnerLocks
from banditgate.policy import build_policy
from banditgate.redis import Redis, StreamEntries, ensure_group, xreadgroup_entries
from banditgate.registry import PolicyRegistry
from banditgate.settings import CoreSettings
from banditgate.spec import ExperimentSpec
from banditgate.tasks import TaskGroup
from banditgate.watcher import ExperimentWatcher
from trainer.learner import Learner, new_learner, to_example
from trainer.loop import TrainingLoop

log = logging.getLogger(__name__)

CONSUMER = "trainer"  # one lock holder per experiment: a shared name lets a new holder see the old one's pending entries
CHECKPOINT_EVERY = 5_000
CHECKPOINT_S = 30.0
LOCK_TTL_MS = 15_000
CANDIDATES_KEPT = 500


@dataclass
class ExperimentTraining:
    loop: TrainingLoop
    unacked: list[bytes] = field(default_factory=list)
    last_update: float = 0.0
    last_checkpoint: float = 0.0
    read_pending: bool = True
    pending_cursor: str = "0"
    last_id: str = ""
    last_joined_ms: int = 0

    @property
    def spec(self) -> ExperimentSpec:
        return self.loop.spec

    @property
    def learner(self) -> Learner:
        return self.loop.learner


class Trainer:
    def __init__(
        self,
        *,
        redis: Redis,
        clock: Callable[[], float] = time.time,
        batch: int = 500,
        owner: str | None = None,
        experiments: list[str] | None = None,
    ) -> None:
        self.redis = redis
        self.clock = clock
        self.batch = batch
        self.owner = owner or f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.watcher = ExperimentWatcher(redis, only=experiments)
        self.registry = PolicyRegistry(redis)
        self.training: dict[str, ExperimentTraining] = {}
        self.locks = OwnerLocks(redis, owner=self.owner, ttl_ms=LOCK_TTL_MS)
        self.published = 0
        self.rejected = 0
        self.changes = 0

    async def run(self, stop: asyncio.Event) -> None:
        watching = TaskGroup("trainer")
        watching.spawn(self.watcher.watch(), "announcements")
        try:
            while not stop.is_set():
                try:
                    processed = await self.run_once()
                except Exception:
                    log.exception("trainer pass failed; retrying")
                    processed = 0
                    await asyncio.sleep(1.0)
                if processed == 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=0.05)
        finally:
            await watching.cancel_all()
        await self.close()

    async def close(self) -> None:
        """Checkpoint what was learned and release the locks."""
        for name, training in list(self.training.items()):
            try:
                await self._checkpoint(name, training)
                await self._release(name)
            except Exception:
                log.exception("final checkpoint for %s failed", name)
        self.training.clear()

    async def run_once(self) -> int:
        processed = 0
        specs = await self.watcher.current()
        for name in list(self.training):
            if name not in specs:
                self.training.pop(name, None)
        for name, spec in specs.items():
            if spec.policy.learner == "static":
                self.training.pop(name, None)
                continue
            if not await self._hold_lock(name):
                self.training.pop(name, None)
                continue
            try:
                processed += await self._step(name, spec)
            except InvalidPolicy as exc:
                log.error("experiment %s: %s", name, exc.message)
        return processed

    async def _hold_lock(self, name: str) -> bool:
        """Take the experiment's lock, or renew it if we hold it."""
        return await self.locks.hold(keys.trainer_lock(name))

    async def _release(self, name: str) -> None:
        await self.locks.release(keys.trainer_lock(name))

    async def _training(self, name: str, spec: ExperimentSpec) -> ExperimentTraining:
        training = self.training.get(name)
        if training is not None and training.spec.policy.learner == spec.policy.learner:
            training.loop.spec = spec
            return training
        await ensure_group(self.redis, keys.joined(name), TRAINER_GROUP)
        version, model = await self.registry.load_current(name)
        if version and not serves(spec, (await self.registry.get(name, version)).learner):
            version, model = 0, None
        serving = build_policy(spec, model, version)
        state = cast(dict[bytes, bytes], await self.redis.hgetall(keys.trainer_state(name)))
        learner: Learner | None = None
        if state.get(b"learner", b"").decode() == spec.policy.learner and b"state" in state:
            try:
                learner = new_learner(spec, state=state[b"state"])
            except (InvalidPolicy, ValueError, KeyError):
                log.warning("experiment %s: saved trainer state unreadable; starting over", name)
        if learner is None:
            learner = new_learner(spec, model=model)
        now = self.clock()
        training = ExperimentTraining(
            TrainingLoop(spec, learner, serving, version), last_update=now, last_checkpoint=now
        )
        self.training[name] = training
        log.info(
            "experiment %s: training from %d examples, serving version %d",
            name,
            learner.n_examples,
            version,
        )
        return training

    async def _step(self, name: str, spec: ExperimentSpec) -> int:
        training = await self._training(name, spec)
        await self._follow_serving(name, training)
        entries = await self._read(name, training)
        for entry_id, fields in entries:
            self._learn_one(training, fields)
            training.unacked.append(entry_id)
            training.last_id = entry_id.decode()
        now = self.clock()
        if training.loop.due(now - training.last_update):
            training.last_update = now
            await self._update(name, training)
            await self._checkpoint(name, training)
        elif len(training.unacked) >= CHECKPOINT_EVERY or (
            training.unacked and now - training.last_checkpoint >= CHECKPOINT_S
        ):
            await self._checkpoint(name, training)
        return len(entries)

    async def _read(self, name: str, training: ExperimentTraining) -> StreamEntries:
        stream = keys.joined(name)
        if training.read_pending:
            # After a restart: what was delivered but never checkpointed comes first.
            entries = await xreadgroup_entries(
                self.redis,
                TRAINER_GROUP,
                CONSUMER,
                stream,
                start=training.pending_cursor,
                count=self.batch,
            )
            if len(entries) < self.batch:
                training.read_pending = False
            if entries:
                training.pending_cursor = entries[-1][0].decode()
                return entries  # a trimmed entry has no fields: it is acknowledged only
        return await xreadgroup_entries(
            self.redis, TRAINER_GROUP, CONSUMER, stream, start=">", count=self.batch
        )

    def _learn_one(self, training: ExperimentTraining, fields: dict[bytes, bytes]) -> None:
        if not fields:
            return
        try:
            joined = decode_joined(fields)
        except (KeyError, ValueError, orjson.JSONDecodeError):
            log.warning("skipping an undecodable joined entry")
            return
        example = to_example(joined, training.spec)
        if example is None:
            return
        training.loop.observe(example)
        training.last_joined_ms = max(training.last_joined_ms, joined["joined_ts_ms"])

    async def _follow_serving(self, name: str, training: ExperimentTraining) -> None:
        """Judge against what routers actually serve (a rollback or manual publish changes it)."""
        version = await self.registry.current_version(name) or 0
        if version == training.loop.serving_version:
            return
        record = await self.registry.get(name, version)
        if not serves(training.spec, record.learner):
            return
        model = await self.registry.model(name, version)
        policy = await asyncio.to_thread(build_policy, training.spec, model, version)
        training.loop.serving_changed(policy, version)

    async def _update(self, name: str, training: ExperimentTraining) -> None:
        spec = training.spec
        outcome = await asyncio.to_thread(training.loop.update, spec.mode == "bandit")
        record = {"ts_ms": int(self.clock() * 1000), **outcome.record}
        if outcome.publish and outcome.model is not None:
            note = record.get("reason", "")
            for change in record.get("changes", []):
                what = [
                    f"{a['arm']} {a['before']:.3f} -> {a['after']:.3f}" for a in change["alarms"]
                ] + [f"{arm} added" for arm in change.get("arms_added", [])]
                note += "; after a change detected at example {}: {}".format(
                    change["examples_seen"], ", ".join(what)
                )
            # With `learner: auto`, every candidate's numbers stay in the lineage.
            candidates = {"candidates": record["candidates"]} if "candidates" in record else {}
            published = await self.registry.publish(
                name,
                outcome.model,
                learner=record.get("learner", spec.policy.learner),
                parent=training.loop.serving_version or None,
                n_examples=record.get("challenger_examples", training.learner.n_examples),
                source="trainer",
                ope={**record.get("numbers", {}), **candidates},
                note=note,
                trained_through=training.last_id,
                last_joined_ms=training.last_joined_ms,
            )
            policy = await asyncio.to_thread(build_policy, spec, outcome.model, published.version)
            await asyncio.to_thread(training.loop.published, policy, published.version)
            record["version"] = published.version
            self.published += 1
            log.info(
                "experiment %s: published policy %d (%s)", name, published.version, record["reason"]
            )
        elif record.get("decision") == "rejected":
            self.rejected += 1
            log.info("experiment %s: candidate rejected (%s)", name, record["reason"])
        if "change" in record:
            self.changes += 1
            await self.redis.hincrby(keys.trainer_state(name), TRAINER_CHANGES, 1)
            log.warning("experiment %s: %s", name, record["reason"])
        if record.get("decision") in ("published", "rejected", "change"):
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.lpush(keys.candidates(name), orjson.dumps(record))
                pipe.ltrim(keys.candidates(name), 0, CANDIDATES_KEPT - 1)
                await pipe.execute()

    async def _checkpoint(self, name: str, training: ExperimentTraining) -> None:
        state = await asyncio.to_thread(training.learner.state_bytes)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                keys.trainer_state(name),
                mapping={
                    "learner": training.learner.kind,
                    "state": state,
                    "examples": training.learner.n_examples,
                    "last_id": training.last_id,
                    "ts_ms": int(self.clock() * 1000),
                },
            )
            if training.unacked:
                pipe.xack(keys.joined(name), TRAINER_GROUP, *training.unacked)
            await pipe.execute()
        training.unacked = []
        training.last_checkpoint = self.clock()


async def run(redis: Redis, *, stop: asyncio.Event) -> None:
    settings = CoreSettings()
    trainer = Trainer(redis=redis, experiments=settings.experiments)
    await trainer.run(stop)
