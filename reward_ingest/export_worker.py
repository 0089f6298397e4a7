"""The exporter: joined examples to Parquet and DSJSON files, optionally uploaded to S3.

It reads each experiment's joined stream with its own consumer group (`exporter`) and
appends every example to the open file pair of its (date, hour) partition (see
`export_files`). A file pair is closed after `export_max_rows` rows or
`export_max_age_s` seconds, on `banditgate export flush`, and when the exporter stops.

Closing is a two-step commit, so a crash at any moment neither loses an example nor
exports one twice into published files:
1. the files are completed and synced under hidden names;
2. one script acknowledges the file's stream entries and records the file pair in
   `bg:{experiment}:export:committed`;
3. the files are renamed into place and the record is removed.
Entries of a file that never reached step 2 are still pending in the group: a restarted
exporter (or another one, after `export_claim_idle_ms`) exports them again, and hidden
leftovers are deleted. A record left by a crash after step 2 is finished on restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from redis.exceptions import RedisError, ResponseError

from banditgate import contracts, keys
from banditgate.events import decode_joined
from banditgate.export_flush import listen_for_flush, reply
from banditgate.redis import Redis, ensure_group
from banditgate.s3 import S3Uploader
from banditgate.scripts import register
from banditgate.spec import ExperimentSpec
from banditgate.tasks import TaskGroup
from banditgate.watcher import ExperimentWatcher
from reward_ingest.export_files import IN_PROGRESS, ExportFile, leftovers, partition, publish
from reward_ingest.settings import IngestSettings
from reward_ingest.streams import (
    Entry,
    by_stream,
    default_consumer,
    retire_consumer,
    sleep_unless_stopped,
    xautoclaim_pages,
)

log = logging.getLogger(__name__)

_READ_COUNT = 5000
_ROUND_ROWS = 50_000  # per experiment and round, so flush requests and stop are answered
_ACK_CHUNK = 1000
_UPLOAD_RETRY_S = 30.0


class Exporter:
    """Exports every served experiment's joined examples under `{data_dir}/export/`."""

    def __init__(
        self,
        *,
        redis: Redis,
        settings: IngestSettings | None = None,
        consumer: str | None = None,
        experiments: list[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.settings = settings or IngestSettings()
        self.consumer = consumer or default_consumer("exporter")
        self.owner = re.sub(r"[^A-Za-z0-9_-]", "_", self.consumer)
        self.watcher = ExperimentWatcher(
            redis, only=experiments if experiments is not None else self.settings.experiments
        )
        self.clock = clock
        self.root = self.settings.data_dir / "export"
        self.host = socket.gethostname()
        self.open: dict[tuple[str, str, str], ExportFile] = {}
        self.uploader = (
            S3Uploader(
                self.settings.export_s3_url,
                root=self.root,
                endpoint_url=self.settings.export_s3_endpoint_url,
                region=self.settings.export_s3_region,
            )
            if self.settings.export_s3_url
            else None
        )
        self._commit = register(redis, "reward_ingest", "export_commit.lua")
        self._ready: set[str] = set()
        self._recovered = False
        self._next_claim = 0.0
        self._next_upload_scan = 0.0
        self._read_up_to: dict[str, bytes] = {}

    @property
    def specs(self) -> dict[str, ExperimentSpec]:
        return self.watcher.specs

    def serves(self, name: str) -> bool:
        return self.watcher.serves(name)

    async def refresh(self) -> None:
        """The experiments served now (see banditgate/watcher.py for how fresh)."""
        self._ready &= set(await self.watcher.current())

    async def run_once(self) -> int:
        """Export what is joined (up to `_ROUND_ROWS` per experiment) and close files that are
        due; returns the rows written."""
        await self.refresh()
        if not self._recovered:
            await self.recover()
            self._recovered = True
        claim = self.clock() >= self._next_claim
        if claim:
            self._next_claim = self.clock() + self.settings.export_claim_idle_ms / 2000
        rows = 0
        for name in list(self.specs):
            if name not in self._ready:
                await ensure_group(self.redis, keys.joined(name), contracts.EXPORTER_GROUP)
                self._ready.add(name)
            if claim:
                rows += await self._claim(name)
            rows += await self._read_all(name)
        await self.close_due()
        await self._upload_missing()
        return rows

    async def flush(self, experiment: str | None = None) -> int:
        """Export everything joined so far, then close every open file; returns files closed."""
        await self.refresh()
        targets: dict[str, bytes] = {}
        for name in self.specs:
            if experiment is None or name == experiment:
                newest: Any = await self.redis.xrevrange(keys.joined(name), count=1)
                if newest:
                    targets[name] = newest[0][0]
        await self.run_once()
        for name in targets:
            await self._take_over_silent(name)
        while await self.run_once() and any(
            _id_key(self._read_up_to.get(name, b"0-0")) < _id_key(target)
            for name, target in targets.items()
        ):
            pass
        return await self.close_all(experiment)

    async def _take_over_silent(self, name: str) -> int:
        """Entries a silent exporter holds (it died with files open): exported here, so a
        flush does not wait `export_claim_idle_ms` for them."""
        stream = keys.joined(name)
        rows = 0
        try:
            consumers: Any = await self.redis.xinfo_consumers(stream, contracts.EXPORTER_GROUP)
        except ResponseError:
            return 0
        for consumer in consumers:
            other = consumer["name"]
            other = other.decode() if isinstance(other, bytes) else str(other)
            silent = int(consumer["idle"]) >= self.settings.export_takeover_idle_ms
            if other == self.consumer or not silent or not int(consumer["pending"]):
                continue
            while True:
                pending = await self.redis.xpending_range(
                    stream,
                    contracts.EXPORTER_GROUP,
                    min="-",
                    max="+",
                    count=_READ_COUNT,
                    consumername=other,
                )
                if not pending:
                    break
                claimed: Any = await self.redis.xclaim(
                    stream,
                    contracts.EXPORTER_GROUP,
                    self.consumer,
                    min_idle_time=0,
                    message_ids=[entry["message_id"] for entry in pending],
                )
                rows += await self._add(name, [e for e in claimed if e and e[0] is not None])
                if len(pending) < _READ_COUNT:
                    break
            log.info("exporter %s: took over what %s held", name, other)
        return rows

    async def close_due(self) -> int:
        now = self.clock()
        due = [
            key
            for key, file in self.open.items()
            if file.rows >= self.settings.export_max_rows
            or now - file.opened >= self.settings.export_max_age_s
        ]
        for key in due:
            await self._close(key)
        return len(due)

    async def close_all(self, experiment: str | None = None) -> int:
        chosen = [key for key in self.open if experiment is None or key[0] == experiment]
        for key in chosen:
            await self._close(key)
        return len(chosen)

    # -- reading ----------------------------------------------------------------------------

    async def _read_all(self, name: str) -> int:
        stream = keys.joined(name)
        rows = 0
        while rows < _ROUND_ROWS:
            response = await self.redis.xreadgroup(
                contracts.EXPORTER_GROUP, self.consumer, {stream: ">"}, count=_READ_COUNT
            )
            entries = by_stream(response).get(stream, [])
            if not entries:
                return rows
            rows += await self._add(name, entries)
            self._read_up_to[name] = entries[-1][0]
            if len(entries) < _READ_COUNT:
                return rows
        return rows

    async def _claim(self, name: str) -> int:
        stream = keys.joined(name)
        rows = 0
        async for entries in xautoclaim_pages(
            self.redis,
            stream,
            contracts.EXPORTER_GROUP,
            self.consumer,
            min_idle_ms=self.settings.export_claim_idle_ms,
            count=_READ_COUNT,
        ):
            mine = {id_ for file in self.open.values() for id_ in file.message_ids}
            rows += await self._add(name, [entry for entry in entries if entry[0] not in mine])
        return rows

    async def _add(self, name: str, entries: list[Entry]) -> int:
        spec = self.specs.get(name)
        arm_features = {arm.name: arm.features for arm in spec.arms} if spec is not None else {}
        unusable: list[bytes] = []

        def write() -> int:
            written = 0
            for message_id, fields in entries:
                try:
                    joined = decode_joined(fields or {})
                    date, hour = partition(joined["decision"]["ts_ms"])
                    key = (name, date, hour)
                    file = self.open.get(key)
                    if file is None:
                        file = ExportFile(
                            name,
                            self.root / name,
                            date,
                            hour,
                            self.owner,
                            self.settings.export_row_group,
                        )
                        file.opened = self.clock()
                        self.open[key] = file
                    file.add(message_id, joined, arm_features)
                    written += 1
                except (KeyError, ValueError, TypeError, IndexError, orjson.JSONDecodeError):
                    unusable.append(message_id)
            return written

        written = await asyncio.to_thread(write)
        if unusable:
            log.warning("exporter %s: %d unreadable joined entries skipped", name, len(unusable))
            await self.redis.xack(keys.joined(name), contracts.EXPORTER_GROUP, *unusable)
        return written

    # -- closing ----------------------------------------------------------------------------

    async def _close(self, key: tuple[str, str, str]) -> None:
        file = self.open.pop(key)
        name = file.experiment
        try:
            await asyncio.to_thread(file.finish)
        except OSError:
            log.exception(
                "exporter %s: cannot finish %s; its rows will be exported again",
                name,
                file.parquet_path,
            )
            await asyncio.to_thread(file.discard)
            return
        record = orjson.dumps(
            {"host": self.host, "moves": [[str(a), str(b)] for a, b in file.moves]}
        )
        try:
            acked = await self._commit(
                keys=[keys.joined(name), keys.export_committed(name)],
                args=[contracts.EXPORTER_GROUP, file.file_id, record, *file.message_ids],
            )
        except (RedisError, OSError):
            log.exception("exporter %s: commit failed; its rows will be exported again", name)
            await asyncio.to_thread(file.discard)
            return
        if int(acked) < len(file.message_ids):
            # Another exporter took these entries over (this one stalled past the claim time).
            log.warning(
                "exporter %s: %d of %d rows in %s were exported elsewhere too",
                name,
                len(file.message_ids) - int(acked),
                len(file.message_ids),
                file.parquet_path,
            )
        published = await asyncio.to_thread(publish, file.moves)
        await self.redis.hdel(keys.export_committed(name), file.file_id)
        log.info("exported %d rows of %s to %s", file.rows, name, file.parquet_path)
        if self.uploader is not None:
            for path in published:
                await asyncio.to_thread(self.uploader.upload, path)

    # -- recovery ---------------------------------------------------------------------------

    async def recover(self) -> None:
        """Finish files committed before a crash; delete hidden leftovers no one will finish."""
        for name in self.specs:
            records = await self.redis.hgetall(keys.export_committed(name))
            for file_id, raw in records.items():
                record = orjson.loads(raw)
                if record.get("host") != self.host:
                    continue
                moves = [(Path(a), Path(b)) for a, b in record["moves"]]
                if all(Path(b).is_relative_to(self.root) for _, b in moves):
                    await asyncio.to_thread(publish, moves)
                    await self.redis.hdel(keys.export_committed(name), file_id)
        # Uncommitted leftovers: ours at once (our pending entries are exported again below),
        # another exporter's once its entries can have been taken over.
        stale_after = self.settings.export_claim_idle_ms / 1000
        now = time.time()
        for path in await asyncio.to_thread(leftovers, self.root):
            ours = path.name.endswith(f".{self.owner}{IN_PROGRESS}")
            with contextlib.suppress(OSError):
                if ours or now - path.stat().st_mtime > stale_after:
                    path.unlink()
        for name in self.specs:
            await self._reexport_own(name)

    async def _reexport_own(self, name: str) -> None:
        """Entries this consumer read in a previous life but never committed."""
        stream = keys.joined(name)
        await ensure_group(self.redis, stream, contracts.EXPORTER_GROUP)
        self._ready.add(name)
        start: bytes | str = "0"
        while True:
            response = await self.redis.xreadgroup(
                contracts.EXPORTER_GROUP, self.consumer, {stream: start}, count=_READ_COUNT
            )
            entries = by_stream(response).get(stream, [])
            if not entries:
                return
            await self._add(name, entries)
            start = entries[-1][0]

    async def _upload_missing(self) -> None:
        if self.uploader is None or self.clock() < self._next_upload_scan:
            return
        self._next_upload_scan = self.clock() + _UPLOAD_RETRY_S
        for path in await asyncio.to_thread(self.uploader.missing):
            await asyncio.to_thread(self.uploader.upload, path)

    # -- long-running mode ------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        requests: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        listening = asyncio.Event()
        group = TaskGroup("exporter")
        group.spawn(listen_for_flush(self.redis, requests, listening), "flush-listener")
        group.spawn(self.watcher.watch(), "announcements")
        backoff = 0.1
        try:
            while not stop.is_set():
                try:
                    while not requests.empty():
                        await self._answer(requests.get_nowait())
                    rows = await self.run_once()
                    backoff = 0.1
                except (RedisError, OSError) as exc:
                    log.warning("exporter: %s; retrying in %.1fs", exc, backoff)
                    await sleep_unless_stopped(backoff, stop)
                    backoff = min(backoff * 2, 5.0)
                    continue
                if rows == 0:
                    await self._wait(requests, stop)
            await self.close_all()
            for name in self.specs:
                await retire_consumer(
                    self.redis, keys.joined(name), contracts.EXPORTER_GROUP, self.consumer
                )
        finally:
            await group.cancel_all()
            for file in self.open.values():
                await asyncio.to_thread(file.discard)
            self.open.clear()

    async def _wait(self, requests: asyncio.Queue[dict[str, Any]], stop: asyncio.Event) -> None:
        """Idle until a flush request, stop, or the next poll."""
        getter = asyncio.ensure_future(requests.get())
        stopper = asyncio.ensure_future(stop.wait())
        try:
            done, _ = await asyncio.wait(
                {getter, stopper}, timeout=0.25, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stopper.cancel()
        if getter in done:
            await self._answer(getter.result())
        else:
            getter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await getter

    async def _answer(self, request: dict[str, Any]) -> None:
        experiment = request.get("experiment")
        files = await self.flush(experiment if isinstance(experiment, str) else None)
        await reply(
            self.redis,
            request["request"],
            {"consumer": self.consumer, "files": files, "pid": os.getpid()},
        )


def _id_key(message_id: bytes) -> tuple[int, int]:
    ms, _, seq = message_id.partition(b"-")
    return int(ms), int(seq or 0)


async def run(redis: Redis, *, stop: asyncio.Event, settings: IngestSettings | None = None) -> None:
    """The exporter for every served experiment, until `stop` is set."""
    await Exporter(redis=redis, settings=settings).run(stop)
