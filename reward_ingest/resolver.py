"""Rewards that came before the router flushed their decision: find their experiment later.

The webhook appends a reward it cannot route to the unrouted stream. The resolver reads it
with its own consumer group and looks the event id up in the router's event index again
every `unrouted_retry_ms` (entries it cannot resolve yet stay pending, and XAUTOCLAIM hands
them back once idle that long). Once found, the reward is appended to its experiment's
reward stream, tagged with its unrouted id (`u`), and acknowledged. The append and the
acknowledgement are on different cluster slots, so a crash between them repeats the append;
the joiner applies a tagged reward once (see `join:moved`). A reward still unknown when the
longest backward window of any experiment has passed is an orphan: counted in
`bg:{unrouted}:counters` (`rewards_orphaned`) and kept in `bg:{unrouted}:orphans`.

Counters in `bg:{unrouted}:counters` (`banditgate.contracts.UnroutedCounter`): rewards_received
(by the webhook), rewards_resolved, rewards_orphaned, rewards_invalid (entries that could not be
read). The acknowledgements and counts are one script, `resolver.lua`.

No accepted reward is trained as late because the resolver was behind: after each pass
(the whole backlog read, every entry due a retry looked up again) the resolver sets
`keys.UNROUTED_WATERMARK`: every unrouted reward appended before it has been moved to its
experiment's stream, or looked up at or after it. Joiners close a window only once the
watermark has passed its end (see worker.py). A resolver that is down holds windows open
(joins wait; nothing is lost). A decision flushed by its router only after its own window
ended is not covered: its unrouted rewards may still be counted late.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import ResponseError

from banditgate import contracts, keys
from banditgate.contracts import RewardField, UnroutedCounter
from banditgate.event_index import lookup
from banditgate.redis import Redis, ensure_group, stream_id_ms
from banditgate.scripts import lua_names, register
from banditgate.spec import RewardSpec
from banditgate.watcher import ExperimentWatcher
from reward_ingest.settings import IngestSettings
from reward_ingest.streams import Entry, by_stream, xautoclaim_pages

log = logging.getLogger(__name__)

# The router may hold decisions in memory for a while when Redis is slow: look this far back
# before the reward for its decision's index entry.
_BEFORE_REWARD_MS = 600_000
_AHEAD_MS = 60_000
_READ_COUNT = 1000
_NAMES = lua_names(reward=RewardField, counter=UnroutedCounter)
_ID, _VALUE, _TS = RewardField.EVENT_ID.raw, RewardField.VALUE.raw, RewardField.TS_MS.raw
_KEY = RewardField.IDEMPOTENCY_KEY.raw


class UnroutedResolver:
    def __init__(
        self,
        *,
        redis: Redis,
        settings: IngestSettings,
        consumer: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.consumer = consumer
        self.clock = clock
        self.watcher = ExperimentWatcher(redis)  # every experiment: a reward may be for any
        self._script = register(redis, "reward_ingest", "resolver.lua")
        self._group_ready = False

    async def run_once(self) -> int:
        """Every new unrouted reward, then those due a retry; then the watermark moves up.

        Returns how many were settled. After Redis lost the group (restarted empty), the
        next call creates it again.
        """
        try:
            return await self._pass()
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                self._group_ready = False
            raise

    async def _pass(self) -> int:
        started_ms = int(self.clock() * 1000)
        if not self._group_ready:
            await ensure_group(self.redis, keys.UNROUTED_REWARDS, contracts.RESOLVER_GROUP)
            self._group_ready = True
        settled = 0
        while True:  # the whole backlog: the watermark vouches for everything before it
            response = await self.redis.xreadgroup(
                contracts.RESOLVER_GROUP,
                self.consumer,
                {keys.UNROUTED_REWARDS: ">"},
                count=_READ_COUNT,
            )
            entries = by_stream(response).get(keys.UNROUTED_REWARDS, [])
            settled += await self._settle(entries)
            if len(entries) < _READ_COUNT:
                break
        async for entries in xautoclaim_pages(
            self.redis,
            keys.UNROUTED_REWARDS,
            contracts.RESOLVER_GROUP,
            self.consumer,
            min_idle_ms=self.settings.unrouted_retry_ms,
            count=_READ_COUNT,
        ):
            settled += await self._settle(entries)
        # What is still pending was looked up within the last retry interval.
        pending = await self.redis.xpending(keys.UNROUTED_REWARDS, contracts.RESOLVER_GROUP)
        held = bool(pending and pending.get("pending"))
        mark = started_ms - (self.settings.unrouted_retry_ms if held else 0)
        await self.redis.set(keys.UNROUTED_WATERMARK, mark)
        return settled

    async def _settle(self, entries: list[Entry]) -> int:
        if not entries:
            return 0
        now_ms = int(self.clock() * 1000)
        readable: list[tuple[bytes, str, bytes, int]] = []
        keys_by_id: dict[bytes, bytes] = {}
        invalid: list[bytes] = []
        for message_id, fields in entries:
            if message_id is None:
                continue
            try:
                assert fields is not None
                event_id = fields[_ID].decode()
                value = fields[_VALUE]
                ts_ms = int(fields[_TS])
                if not math.isfinite(float(value)):
                    raise ValueError(value)
            except (AssertionError, KeyError, ValueError, UnicodeDecodeError):
                invalid.append(message_id)
                continue
            readable.append((message_id, event_id, value, ts_ms))
            if _KEY in fields:
                keys_by_id[message_id] = fields[_KEY]
        specs = await self.watcher.current()
        found: dict[str, str] = {}
        if readable:
            found = await lookup(
                self.redis,
                [event_id for _, event_id, _, _ in readable],
                newest_ms=now_ms + _AHEAD_MS,
                oldest_ms=min(ts for _, _, _, ts in readable) - _BEFORE_REWARD_MS,
            )
        hold_ms = self._hold_ms(specs.values())
        resolved: list[bytes] = []
        orphans: list[tuple[bytes, str, bytes, int]] = []
        async with self.redis.pipeline(transaction=False) as pipe:
            for message_id, event_id, value, ts_ms in readable:
                experiment = found.get(event_id)
                if experiment is not None and experiment in specs:
                    moved: dict[Any, Any] = {
                        RewardField.EVENT_ID: event_id,
                        RewardField.VALUE: value,
                        RewardField.TS_MS: ts_ms,
                        RewardField.MOVED_FROM: message_id,
                    }
                    if key := keys_by_id.get(message_id):
                        moved[RewardField.IDEMPOTENCY_KEY] = key
                    pipe.xadd(
                        keys.rewards(experiment),
                        moved,
                        maxlen=self.settings.stream_maxlen,
                        approximate=True,
                    )
                    resolved.append(message_id)
                elif now_ms - max(ts_ms, stream_id_ms(message_id)) >= hold_ms:
                    orphans.append((message_id, event_id, value, ts_ms))
            if resolved:
                await pipe.execute()
        if not (resolved or orphans or invalid):
            return 0
        args: list[Any] = [
            _NAMES,
            contracts.RESOLVER_GROUP,
            self.settings.join_audit_maxlen,
            len(resolved),
            *resolved,
        ]
        args.append(len(orphans))
        for orphan in orphans:
            args.extend(orphan)
        args += [len(invalid), *invalid]
        counts = await self._script(
            keys=[keys.UNROUTED_REWARDS, keys.UNROUTED_COUNTERS, keys.UNROUTED_ORPHANS], args=args
        )
        if orphans or invalid:
            log.info("unrouted rewards: %d orphaned, %d unreadable", counts[1], counts[2])
        return len(resolved) + len(orphans) + len(invalid)

    @staticmethod
    def _hold_ms(specs: Any) -> int:
        longest = max(
            (spec.reward.backward_window_s for spec in specs),
            default=RewardSpec().backward_window_s,
        )
        return int(longest * 1000)
