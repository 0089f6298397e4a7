"""The joiner: joins rewards to decisions for every experiment, and emits joined examples.

Each experiment has its own loop: read a batch from the decisions and rewards streams (one
consumer group, `joiner`, on each), hand it to the join script (`join_state`), which applies
it, acknowledges it, closes due windows and emits joined examples in one atomic call. On
start a joiner first re-applies what it had read but not acknowledged; entries left pending
by a joiner that died are taken over (XAUTOCLAIM) after `join_claim_idle_ms`. Several
joiner processes can run side by side: the script applies a message only if it can still
acknowledge it, so nothing is applied twice.

It runs under `banditgate workers` (and `banditgate serve`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from banditgate import contracts, keys
from banditgate.redis import Redis, ensure_group, stream_id_ms
from banditgate.spec import ExperimentSpec
from banditgate.tasks import TaskGroup
from banditgate.watcher import ExperimentWatcher
from reward_ingest.join_state import (
    DecisionEntry,
    JoinScript,
    PreparedStep,
    RewardEntry,
    StepResult,
    decode_decision_entry,
    decode_reward_entry,
)
from reward_ingest.resolver import UnroutedResolver
from reward_ingest.settings import IngestSettings
from reward_ingest.streams import (
    Entry,
    by_stream,
    default_consumer,
    retire_consumer,
    sleep_unless_stopped,
    unless_stopped,
    xautoclaim_pages,
)

log = logging.getLogger(__name__)

_NEVER = -(2**50)
_ALWAYS = 2**50


class ExperimentGone(Exception):
    """The experiment was deleted (or is no longer served) while being joined."""


@dataclass
class Read:
    """A batch, and how far each stream has been read: every entry appended before the
    mark (ms) has been delivered to some consumer."""

    decisions: list[Entry]
    rewards: list[Entry]
    decisions_mark: int = _NEVER
    rewards_mark: int = _NEVER
    # The resolver's watermark when it was read (before the rewards): unrouted rewards
    # appended before it are in the rewards stream by now.
    unrouted_mark: int = _ALWAYS

    @property
    def size(self) -> int:
        return len(self.decisions) + len(self.rewards)


class Joiner:
    """Joins every served experiment: the `experiments` filter, by default the settings'."""

    def __init__(
        self,
        *,
        redis: Redis,
        settings: IngestSettings | None = None,
        consumer: str | None = None,
        clock: Callable[[], float] = time.time,
        experiments: list[str] | None = None,
        resolve_unrouted: bool = True,
    ) -> None:
        self.redis = redis
        self.settings = settings or IngestSettings()
        self.consumer = consumer or self.settings.join_consumer or default_consumer("joiner")
        self.clock = clock
        self.watcher = ExperimentWatcher(
            redis,
            only=experiments if experiments is not None else self.settings.experiments,
            on_change=self._experiments_changed,
        )
        self._changed = asyncio.Event()
        self.script = JoinScript(redis)
        self.resolver = (
            UnroutedResolver(
                redis=redis, settings=self.settings, consumer=self.consumer, clock=clock
            )
            if resolve_unrouted
            else None
        )
        self._ready: set[str] = set()
        self._next_due: dict[str, float | None] = {}
        self._position: dict[str, _Position] = {}

    @property
    def specs(self) -> dict[str, ExperimentSpec]:
        return self.watcher.specs

    def serves(self, name: str) -> bool:
        return self.watcher.serves(name)

    async def _experiments_changed(self, name: str | None, kind: str) -> None:
        self._changed.set()

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def refresh(self) -> dict[str, ExperimentSpec]:
        """The experiments served now (see banditgate/watcher.py for how fresh)."""
        specs = await self.watcher.current()
        self._ready &= set(specs)
        return specs

    # -- burst mode -----------------------------------------------------------------------

    async def run_once(self) -> int:
        """Apply everything readable now, close what is due; returns messages + windows handled."""
        await self.refresh()
        handled = 0
        if self.resolver is not None:
            handled += await self.resolver.run_once()
        for name in list(self.specs):
            handled += await self.drain(name)
        return handled

    async def drain(self, name: str) -> int:
        await self.ensure_groups(name)
        handled = await self.recover(name) + await self.claim(name)
        return handled + (await self.pump(name, await self.read(name)))[0]

    async def pump(
        self, name: str, read: Read, *, stop: asyncio.Event | None = None, budget_s: float = 0
    ) -> tuple[int, StepResult]:
        """Apply `read`, then keep reading and applying until nothing is left or due.

        While Redis runs one batch's script, this process reads and prepares the next: the
        next read is sent first, on another connection, so its answer arrives while the
        script runs. (Delivered early, the next batch is in the group's pending list while
        the script runs, which only makes its window closing more cautious.) Returns after
        `budget_s` (if set) or when `stop` is set, having applied every batch it read.
        """
        handled = 0
        deadline = time.monotonic() + budget_s
        step = self.prepare(name, read)
        while True:
            reading = asyncio.create_task(self.read(name))
            running = asyncio.create_task(self.execute(step))
            try:
                following = await reading
            except BaseException:
                await asyncio.gather(running, return_exceptions=True)
                raise
            next_step = self.prepare(name, following)
            result = await running
            handled += read.size + result.closed + result.expired
            halt = (stop is not None and stop.is_set()) or (
                budget_s and time.monotonic() > deadline
            )
            if halt or (following.size == 0 and not self._more(result)):
                # What was read is applied before returning (an empty step may still close).
                result = await self.execute(next_step)
                handled += following.size + result.closed + result.expired
                if halt or not self._more(result):
                    return handled, result
                following = await self.read(name)
                next_step = self.prepare(name, following)
            read, step = following, next_step

    # -- the steps --------------------------------------------------------------------------

    async def ensure_groups(self, name: str) -> None:
        if name not in self._ready:
            await ensure_group(self.redis, keys.decisions(name), contracts.JOINER_GROUP)
            await ensure_group(self.redis, keys.rewards(name), contracts.JOINER_GROUP)
            self._ready.add(name)

    async def read(
        self, name: str, *, block_ms: int | None = None, stop: asyncio.Event | None = None
    ) -> Read:
        dkey, rkey = keys.decisions(name), keys.rewards(name)
        n_decisions = self.settings.join_decision_entries
        n_rewards = self.settings.join_reward_batch
        position = self._position.setdefault(name, _Position())
        started = self.now_ms()  # a read that returns all there is has seen everything before
        if block_ms is None:
            # Catching up on a decisions backlog, do not let the rewards run ahead of it:
            # a reward read before its decision takes the slower held-reward path.
            skip_rewards = position.decisions_behind and position.rewards_ms > position.decisions_ms
            async with self.redis.pipeline(transaction=False) as pipe:
                # First the watermark: whatever the resolver moved before setting it is read next.
                pipe.get(keys.UNROUTED_WATERMARK)
                pipe.xreadgroup(
                    contracts.JOINER_GROUP, self.consumer, {dkey: ">"}, count=n_decisions
                )
                if not skip_rewards:
                    pipe.xreadgroup(
                        contracts.JOINER_GROUP, self.consumer, {rkey: ">"}, count=n_rewards
                    )
                watermark, *answers = await pipe.execute()
            decisions = by_stream(answers[0]).get(dkey, [])
            if skip_rewards and len(decisions) < n_decisions:
                # The backlog of decisions just ended: the rewards are next, not skipped.
                skip_rewards = False
                answers.append(
                    await self.redis.xreadgroup(
                        contracts.JOINER_GROUP, self.consumer, {rkey: ">"}, count=n_rewards
                    )
                )
            rewards = [] if skip_rewards else by_stream(answers[1]).get(rkey, [])
            return Read(
                decisions,
                rewards,
                position.advance("decisions", decisions, len(decisions) < n_decisions, started),
                position.rewards_ms - 1
                if skip_rewards
                else position.advance("rewards", rewards, len(rewards) < n_rewards, started),
                self._unrouted_mark(watermark),
            )
        watermark = await self.redis.get(keys.UNROUTED_WATERMARK)
        call = self.redis.xreadgroup(
            contracts.JOINER_GROUP,
            self.consumer,
            {dkey: ">", rkey: ">"},
            count=n_decisions,
            block=block_ms,
        )
        response: Any = None
        if stop is None:
            response = await call
        else:
            completed, response = await unless_stopped(call, stop)
            if not completed:
                return Read([], [])
        streams = by_stream(response)
        decisions, rewards = streams.get(dkey, []), streams.get(rkey, [])
        return Read(
            decisions,
            rewards,
            position.advance("decisions", decisions, len(decisions) < n_decisions, started),
            position.advance("rewards", rewards, len(rewards) < n_decisions, started),
            self._unrouted_mark(watermark),
        )

    def _unrouted_mark(self, watermark: bytes | str | None) -> int:
        """How far windows may close for the unrouted rewards: unbounded for a joiner that
        leaves them to others (`resolve_unrouted=False`), or before any resolver ran (an
        empty Redis holds no unrouted reward)."""
        if self.resolver is None or watermark is None:
            return _ALWAYS
        return int(watermark)

    async def apply(self, name: str, read: Read, *, close: bool = True) -> StepResult:
        return await self.execute(self.prepare(name, read, close=close))

    async def execute(self, step: PreparedStep) -> StepResult:
        result = await self.script.run(step)
        self._next_due[step.experiment] = result.next_due_ms
        return result

    def prepare(self, name: str, read: Read, *, close: bool = True) -> PreparedStep:
        """Decode a batch into the script's arguments (no I/O)."""
        spec = self.specs.get(name)
        if spec is None:
            raise ExperimentGone(name)
        reward = spec.reward
        window_ms = int(reward.window_s * 1000)
        decisions: list[DecisionEntry] = [
            decode_decision_entry(message_id, fields, window_ms)
            for message_id, fields in read.decisions
            if message_id is not None
        ]
        rewards: list[RewardEntry] = [
            decode_reward_entry(message_id, fields, reward)
            for message_id, fields in read.rewards
            if message_id is not None
        ]
        now = self.now_ms()
        skew = self.settings.join_clock_skew_ms
        if close:
            # Never ahead of what has been read: windows wait for the rewards appended
            # before their end, held rewards for the decisions appended before their deadline.
            close_until = min(now, read.rewards_mark, read.unrouted_mark) - skew
            expire_until = min(now, read.decisions_mark) - skew
        else:
            close_until = expire_until = _NEVER
        return self.script.prepare(
            name,
            group=contracts.JOINER_GROUP,
            reward=reward,
            now_ms=now,
            close_until_ms=close_until,
            expire_until_ms=expire_until,
            decisions=decisions,
            rewards=rewards,
            close_limit=self.settings.join_close_limit,
            retention_ms=int(self.settings.join_closed_retention_s * 1000),
            skew_ms=skew,
            joined_maxlen=self.settings.stream_maxlen,
            audit_maxlen=self.settings.join_audit_maxlen,
        )

    async def recover(self, name: str) -> int:
        """Apply what this consumer read before but never acknowledged (after a restart)."""
        handled = 0
        for stream, count in self._batches(name):
            start: bytes | str = "0"
            while True:
                response = await self.redis.xreadgroup(
                    contracts.JOINER_GROUP, self.consumer, {stream: start}, count=count
                )
                entries = by_stream(response).get(stream, [])
                if not entries:
                    break
                await self.apply(name, self._as_read(name, stream, entries), close=False)
                handled += len(entries)
                start = entries[-1][0]
        return handled

    async def claim(self, name: str) -> int:
        """Take over entries a silent consumer left pending for longer than `join_claim_idle_ms`."""
        handled = 0
        for stream, count in self._batches(name):
            async for entries in xautoclaim_pages(
                self.redis,
                stream,
                contracts.JOINER_GROUP,
                self.consumer,
                min_idle_ms=self.settings.join_claim_idle_ms,
                count=count,
            ):
                if entries:
                    await self.apply(name, self._as_read(name, stream, entries), close=False)
                    handled += len(entries)
        return handled

    def _batches(self, name: str) -> tuple[tuple[str, int], tuple[str, int]]:
        return (
            (keys.decisions(name), self.settings.join_decision_entries),
            (keys.rewards(name), self.settings.join_reward_batch),
        )

    @staticmethod
    def _as_read(name: str, stream: str, entries: list[Entry]) -> Read:
        if stream == keys.decisions(name):
            return Read(entries, [])
        return Read([], entries)

    def _more(self, result: StepResult) -> bool:
        limit = self.settings.join_close_limit
        return result.closed >= limit or result.expired >= limit

    # -- long-running mode ------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set: one loop per experiment, the resolver; a new experiment's loop
        starts when its announcement arrives (and a dead loop within `join_refresh_s`)."""
        group = TaskGroup("joiner")
        loops: dict[str, asyncio.Task[None]] = {}
        watchers = TaskGroup("joiner-announcements")
        watchers.spawn(self.watcher.watch(), "experiments")
        if self.resolver is not None:
            watchers.spawn(self.resolver.watcher.watch(), "resolver-experiments")
            group.spawn(self._resolve_loop(stop), "resolver")
        try:
            while not stop.is_set():
                try:
                    await self.refresh()
                except (RedisError, OSError) as exc:
                    log.warning("joiner cannot read experiments (%s)", exc)
                for name in self.specs:
                    task = loops.get(name)
                    if task is None or task.done():
                        loops[name] = group.spawn(self._experiment_loop(name, stop), name)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        unless_stopped(self._changed.wait(), stop),
                        timeout=self.settings.join_refresh_s,
                    )
                self._changed.clear()
            await group.wait_all(timeout=30)
        finally:
            await group.cancel_all()
            await watchers.cancel_all()

    def _block_ms(self, name: str) -> int:
        block = self.settings.join_max_block_ms
        due = self._next_due.get(name)
        if due is not None:
            wait = int(due + self.settings.join_clock_skew_ms - self.now_ms()) + 1
            block = min(block, max(wait, 1))
        return block

    async def _experiment_loop(self, name: str, stop: asyncio.Event) -> None:
        log.info("joining %s as %s", name, self.consumer)
        claim_every = max(self.settings.join_claim_idle_ms / 2000, 0.05)
        next_claim = 0.0
        idle = False
        backoff = 0.1
        recovered = False
        gone = False
        while not stop.is_set() and name in self.specs:
            try:
                await self.ensure_groups(name)
                if not recovered:
                    await self.recover(name)
                    recovered = True
                if time.monotonic() >= next_claim:
                    await self.claim(name)
                    next_claim = time.monotonic() + claim_every
                read = await self.read(
                    name, block_ms=self._block_ms(name) if idle else None, stop=stop
                )
                if stop.is_set() and read.size == 0:
                    break
                if read.size == 0:
                    result = await self.apply(name, read)
                else:
                    # Busy: overlap reading with applying, returning now and then for claims.
                    _, result = await self.pump(name, read, stop=stop, budget_s=1.0)
                idle = read.size == 0 and not self._more(result)
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except ExperimentGone:
                break
            except (RedisError, OSError) as exc:
                if "NOGROUP" in str(exc) and not await self._still_exists(name):
                    gone = True
                    break  # deleted: recreating its groups would bring its keys back
                self._ready.discard(name)
                recovered = False  # a batch read but not applied is in our pending list
                log.warning("joiner %s: %s; retrying in %.1fs", name, exc, backoff)
                await sleep_unless_stopped(backoff, stop)
                backoff = min(backoff * 2, 5.0)
        if not gone:
            await self._finish(name)

    async def _still_exists(self, name: str) -> bool:
        try:
            return bool(await self.redis.exists(keys.spec(name)))
        except (RedisError, OSError):
            return True

    async def _finish(self, name: str) -> None:
        """Stopping: apply what this consumer still holds, then leave the groups if empty-handed."""
        if name not in self.specs:
            return
        try:
            await self.recover(name)
            for stream in (keys.decisions(name), keys.rewards(name)):
                await retire_consumer(self.redis, stream, contracts.JOINER_GROUP, self.consumer)
        except (RedisError, OSError) as exc:
            log.warning(
                "joiner %s: could not finish cleanly (%s); entries stay pending for takeover",
                name,
                exc,
            )

    async def _resolve_loop(self, stop: asyncio.Event) -> None:
        assert self.resolver is not None
        interval = self.settings.unrouted_retry_ms / 1000
        backoff = 0.1
        while not stop.is_set():
            try:
                settled = await self.resolver.run_once()
                backoff = 0.1
                if not settled:
                    await sleep_unless_stopped(min(interval, 0.25), stop)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("unrouted reward resolver: %s; retrying in %.1fs", exc, backoff)
                await sleep_unless_stopped(backoff, stop)
                backoff = min(backoff * 2, 5.0)
            except Exception:
                # Windows wait for the resolver's watermark: it must not stop for good.
                log.exception("unrouted reward resolver failed; retrying in %.1fs", backoff)
                await sleep_unless_stopped(backoff, stop)
                backoff = min(backoff * 2, 5.0)


@dataclass
class _Position:
    """How far this joiner has read each stream of one experiment."""

    decisions_ms: int = 0
    rewards_ms: int = 0
    decisions_behind: bool = False

    def advance(self, stream: str, entries: list[Entry], complete: bool, started_ms: int) -> int:
        if entries:
            setattr(self, f"{stream}_ms", stream_id_ms(entries[-1][0]))
        if stream == "decisions":
            self.decisions_behind = not complete
        if complete:
            return started_ms
        # A full batch: entries after its last one may be unread, even in the same millisecond.
        return stream_id_ms(entries[-1][0]) - 1


async def run(redis: Redis, *, stop: asyncio.Event, settings: IngestSettings | None = None) -> None:
    """The joiner for every served experiment, until `stop` is set."""
    await Joiner(redis=redis, settings=settings).run(stop)
