"""Which experiments a component serves, and their specs, kept current by announcements.

Every component needs the same two things: the filter (`CoreSettings.experiments`: only
these; unset: all) and the specs of the experiments it serves. `ExperimentWatcher` is both,
with one freshness rule for every component:

- While `watch()` runs and is subscribed, the cache is current: a spec change or deletion
  is applied when its announcement arrives (`banditgate.announce`), and every
  (re)subscription starts with a full resync, so what was announced meanwhile is not lost.
- Otherwise (burst mode, `run_once()` in tests and tools, or while resubscribing)
  `current()` reads every served spec from Redis again.
- `get(name)` answers from the cache, and reads a name it does not hold from Redis: a
  reward may name an experiment created a moment before its announcement arrives.

A stored spec this version cannot read is logged once and skipped; the last readable
version of it, if the watcher had one, stays in use.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from banditgate.announce import listen
from banditgate.contracts import Announced
from banditgate.errors import BanditgateError
from banditgate.redis import Redis
from banditgate.spec import ExperimentSpec
from banditgate.store import ExperimentStore

log = logging.getLogger(__name__)

# After the cache changed: (experiment, announcement kind), or (None, "resync") after a resync.
Listener = Callable[[str | None, str], Awaitable[None]]
RESYNC = "resync"


class ExperimentWatcher:
    def __init__(
        self,
        redis: Redis,
        *,
        only: Collection[str] | None = None,
        on_change: Listener | None = None,
    ) -> None:
        """`only`: the experiments served (None: all); `on_change`: told after each change."""
        self.store = ExperimentStore(redis)
        self.only = frozenset(only) if only is not None else None
        self.on_change = on_change
        # Replaced, never changed in place: a reference taken is a consistent snapshot.
        self.specs: dict[str, ExperimentSpec] = {}
        self.watching = asyncio.Event()  # subscribed and resynced: the cache is current
        self._lock = asyncio.Lock()
        self._unreadable: set[str] = set()

    def serves(self, name: str) -> bool:
        return self.only is None or name in self.only

    async def current(self) -> dict[str, ExperimentSpec]:
        """The served specs: the cache while watching, else read from Redis now."""
        if self.watching.is_set():
            return self.specs
        return await self.sync()

    async def get(self, name: str) -> ExperimentSpec | None:
        """One served spec (None: unknown, not served or unreadable)."""
        if not self.serves(name):
            return None
        spec = self.specs.get(name)
        if spec is None or not self.watching.is_set():
            async with self._lock:
                await self._load(name)
            spec = self.specs.get(name)
        return spec

    async def sync(self) -> dict[str, ExperimentSpec]:
        """Read every served spec from Redis; experiments gone from the store are dropped."""
        async with self._lock:
            fresh: dict[str, ExperimentSpec] = {}
            for name in await self.store.names():
                if self.serves(name):
                    spec = await self._read(name)
                    if spec is not None:
                        fresh[name] = spec
            self.specs = fresh
        return fresh

    async def watch(self) -> None:
        """Follow announcements until cancelled (`watching` is set while subscribed)."""
        try:
            await listen(self.store.redis, self._handle, ready=self.watching)
        finally:
            self.watching.clear()

    async def _handle(self, message: dict[str, Any] | None) -> None:
        if message is None:  # (re)subscribed: anything may have changed meanwhile
            await self.sync()
            await self._tell(None, RESYNC)
            return
        name, kind = message.get("experiment"), message.get("kind")
        if not isinstance(name, str) or not isinstance(kind, str) or not self.serves(name):
            return
        if kind in (Announced.SPEC, Announced.DELETED):
            async with self._lock:
                await self._load(name)
        await self._tell(name, kind)

    async def _tell(self, name: str | None, kind: str) -> None:
        if self.on_change is None:
            return
        try:
            await self.on_change(name, kind)
        except Exception:  # a listener's failure must not end the subscription
            log.exception("handling the %s change of %s failed", kind, name or "every experiment")

    async def _load(self, name: str) -> None:
        """Read one spec into the cache (the caller holds the lock)."""
        spec = await self._read(name)
        if spec is not self.specs.get(name):
            # A new dict, never a changed one: whoever iterates the old one is not disturbed.
            specs = dict(self.specs)
            if spec is None:
                specs.pop(name, None)
            else:
                specs[name] = spec
            self.specs = specs

    async def _read(self, name: str) -> ExperimentSpec | None:
        """The stored spec; if unreadable, the one cached (logged once)."""
        try:
            spec = await self.store.find(name)
        except (BanditgateError, ValueError) as exc:
            kept = self.specs.get(name)
            if name not in self._unreadable:
                self._unreadable.add(name)
                what = "the last readable version stays" if kept is not None else "not served"
                log.error("experiment %s: stored spec unreadable (%s); %s", name, exc, what)
            return kept
        self._unreadable.discard(name)
        return spec
