"""Data capture: a sample of each arm's requests and responses, as JSON lines on disk.

Switched on per experiment (`capture:` in the spec). For a sampled request the router
hands the bodies to `DataCapture.submit`, which only appends to a bounded in-memory
buffer (a full buffer drops the record and counts it: capture never slows or blocks
a request). A writer task drains the buffer every `flush_interval_s` in a thread,
encodes each record in SageMaker's data-capture shape and appends it to

    {data_dir}/capture/{experiment}/{arm}/yyyy/mm/dd/hh/{host}-{pid}-{n}.jsonl

rotated when the hour changes or a file passes `max_file_bytes`. Closed files are
uploaded to S3 (`capture.s3_url`) with boto3 and retried with backoff until they are
in; a write or upload failure is logged and counted and never stops routing.

A record (one line):

    {"captureData": {"endpointInput": {"observedContentType": "application/json",
                                       "mode": "INPUT", "data": "...", "encoding": "JSON"},
                     "endpointOutput": {... "mode": "OUTPUT" ...}},
     "eventMetadata": {"eventId": ..., "inferenceId": ..., "inferenceTime": ...},
     "eventVersion": "0",
     "banditgate": {"experiment", "arm", "policyVersion", "status", "latencyMs", ...}}

`encoding` is JSON for JSON bodies, CSV for text/csv, BASE64 for anything else (binary,
or text that is not UTF-8); a body longer than `max_body_bytes` is cut there and marked
`truncated`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson
from prometheus_client import Counter

from banditgate.metrics import ProcessMetrics
from banditgate.policy import unit_fraction
from banditgate.s3 import S3Uploader
from banditgate.spec import CaptureSpec

log = logging.getLogger(__name__)


def capture_fraction(event_id: str) -> float:
    """Where an event id falls in [0, 1): the same id is always sampled the same way."""
    return unit_fraction(f"capture\x00{event_id}")


@dataclass(frozen=True)
class CapturePlan:
    fraction: float
    request: bool
    response: bool
    max_body_bytes: int
    s3_url: str | None

    @classmethod
    def from_spec(cls, spec: CaptureSpec) -> CapturePlan:
        return cls(
            spec.sample_percent / 100.0,
            spec.request,
            spec.response,
            spec.max_body_bytes,
            spec.s3_url,
        )

    def selects(self, event_id: str) -> bool:
        if self.fraction >= 1.0:
            return True
        if self.fraction <= 0.0:
            return False
        return capture_fraction(event_id) < self.fraction


@dataclass(slots=True)
class Captured:
    """What a request leaves for the writer: references only, encoded later in a thread."""

    experiment: str
    arm: str
    event_id: str
    ts: float
    policy_version: int
    status: int
    latency_ms: float
    request: bytes | None
    request_type: str
    response: bytes | None
    response_type: str
    plan: CapturePlan
    error: str | None = None


def payload(body: bytes, content_type: str, mode: str, limit: int) -> dict[str, Any]:
    """One side in SageMaker's shape: JSON or CSV text when it is that, else base64."""
    truncated = len(body) > limit
    if truncated:
        body = body[:limit]
    lowered = content_type.lower()
    encoding = "BASE64"
    data: str | None = None
    if "json" in lowered or lowered.startswith("text/csv"):
        try:
            data = body.decode("utf-8")
            encoding = "JSON" if "json" in lowered else "CSV"
        except UnicodeDecodeError:
            data = None
    if data is None:
        data = base64.b64encode(body).decode("ascii")
    out: dict[str, Any] = {
        "observedContentType": content_type,
        "mode": mode,
        "data": data,
        "encoding": encoding,
    }
    if truncated:
        out["truncated"] = True
    return out


def record(c: Captured) -> dict[str, Any]:
    capture: dict[str, Any] = {}
    if c.request is not None:
        capture["endpointInput"] = payload(
            c.request, c.request_type, "INPUT", c.plan.max_body_bytes
        )
    if c.response is not None:
        capture["endpointOutput"] = payload(
            c.response, c.response_type, "OUTPUT", c.plan.max_body_bytes
        )
    when = datetime.fromtimestamp(c.ts, UTC)
    ours: dict[str, Any] = {
        "experiment": c.experiment,
        "arm": c.arm,
        "policyVersion": c.policy_version,
        "status": c.status,
        "latencyMs": round(c.latency_ms, 3),
    }
    if c.error is not None:
        ours["error"] = c.error
    return {
        "captureData": capture,
        "eventMetadata": {
            "eventId": c.event_id,
            "inferenceId": c.event_id,
            "inferenceTime": when.strftime("%Y-%m-%dT%H:%M:%S.")
            + f"{when.microsecond // 1000:03d}Z",
        },
        "eventVersion": "0",
        "banditgate": ours,
    }


@dataclass
class CaptureStats:
    captured: int = 0
    dropped: int = 0
    written: int = 0
    write_failures: int = 0
    files_closed: int = 0
    uploads: int = 0
    upload_failures: int = 0


@dataclass
class _OpenFile:
    path: Path
    hour: str
    handle: IO[bytes]
    s3_url: str | None = None
    size: int = 0


@dataclass
class _Uploads:
    uploader: S3Uploader
    pending: deque[tuple[Path, float, int]] = field(default_factory=deque)  # path, due, tries


class CaptureMetrics:
    def __init__(self, metrics: ProcessMetrics) -> None:
        records = metrics.counter(
            "banditgate_router_capture_records",
            "Data-capture records: written to a file, or dropped (buffer full).",
            ["outcome"],
        )
        self.written: Counter = records.labels(outcome="written")
        self.dropped: Counter = records.labels(outcome="dropped")
        self.write_failures = metrics.counter(
            "banditgate_router_capture_write_failures",
            "Data-capture batches that could not be written (disk full, permissions).",
        )
        uploads = metrics.counter(
            "banditgate_router_capture_uploads",
            "Closed data-capture files uploaded to S3, or attempts that failed (retried).",
            ["outcome"],
        )
        self.uploaded: Counter = uploads.labels(outcome="uploaded")
        self.upload_failures: Counter = uploads.labels(outcome="failed")


class DataCapture:
    def __init__(
        self,
        data_dir: Path,
        *,
        max_buffer: int = 10_000,
        max_buffer_bytes: int = 64 * 1024 * 1024,
        max_file_bytes: int = 64 * 1024 * 1024,
        flush_interval_s: float = 0.5,
        s3_endpoint_url: str | None = None,
        s3_region: str | None = None,
        metrics: ProcessMetrics | None = None,
        s3_client: Any = None,
    ) -> None:
        self.root = data_dir / "capture"
        self.max_buffer = max_buffer
        self.max_buffer_bytes = max_buffer_bytes
        self.max_file_bytes = max_file_bytes
        self.flush_interval_s = flush_interval_s
        self.s3_endpoint_url = s3_endpoint_url
        self.s3_region = s3_region
        self.s3_client = s3_client
        self.metrics = CaptureMetrics(metrics) if metrics is not None else None
        self.stats = CaptureStats()
        self.buffer: deque[Captured] = deque()
        self.buffered_bytes = 0
        self.files: dict[tuple[str, str], _OpenFile] = {}
        self.uploads: dict[str, _Uploads] = {}  # by S3 URL
        self.prefix = f"{socket.gethostname()}-{os.getpid()}"
        self.sequence = 0
        self.task: asyncio.Task[None] | None = None

    # -- the request path: never waits, never raises ----------------------------------------

    def submit(self, captured: Captured) -> bool:
        size = len(captured.request or b"") + len(captured.response or b"")
        if (
            len(self.buffer) >= self.max_buffer
            or self.buffered_bytes + size > self.max_buffer_bytes
        ):
            self.stats.dropped += 1
            if self.metrics is not None:
                self.metrics.dropped.inc()
            return False
        self.buffer.append(captured)
        self.buffered_bytes += size
        self.stats.captured += 1
        return True

    # -- the writer ----------------------------------------------------------------------

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run(), name="capture")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            await self.flush()

    async def flush(self) -> None:
        batch = list(self.buffer)
        if not batch and not self.files and not any(u.pending for u in self.uploads.values()):
            return  # nothing captured, nothing open: no thread hop
        self.buffer.clear()
        self.buffered_bytes = 0
        await asyncio.to_thread(self._write, batch, time.time())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None
        await self.flush()
        await asyncio.to_thread(self._close_all)

    def _write(self, batch: list[Captured], now: float) -> None:
        """Blocking (in a thread): append records, rotate files, upload closed ones."""
        hour = datetime.fromtimestamp(now, UTC).strftime("%Y/%m/%d/%H")
        for key, open_file in list(self.files.items()):
            if open_file.hour != hour:
                self._close(key)
        written = 0
        for c in batch:
            try:
                line = orjson.dumps(record(c)) + b"\n"
                open_file = self._file(c, datetime.fromtimestamp(c.ts, UTC).strftime("%Y/%m/%d/%H"))
                open_file.handle.write(line)
                open_file.size += len(line)
                written += 1
                if open_file.size >= self.max_file_bytes:
                    self._close((c.experiment, c.arm))
            except (OSError, TypeError, ValueError) as exc:
                self.stats.write_failures += 1
                if self.metrics is not None:
                    self.metrics.write_failures.inc()
                log.warning("data capture of %s/%s failed: %s", c.experiment, c.arm, exc)
        for open_file in self.files.values():
            with contextlib.suppress(OSError):
                open_file.handle.flush()
        self.stats.written += written
        if self.metrics is not None and written:
            self.metrics.written.inc(written)
        self._upload_due(now)

    def _file(self, c: Captured, hour: str) -> _OpenFile:
        key = (c.experiment, c.arm)
        open_file = self.files.get(key)
        if open_file is not None and open_file.hour == hour:
            return open_file
        if open_file is not None:
            self._close(key)
        folder = self.root / c.experiment / c.arm / hour
        folder.mkdir(parents=True, exist_ok=True)
        self.sequence += 1
        path = folder / f"{self.prefix}-{int(time.time() * 1000)}-{self.sequence}.jsonl"
        if c.plan.s3_url is not None:
            self._uploads_for(c.plan.s3_url)
        open_file = self.files[key] = _OpenFile(path, hour, path.open("ab"), c.plan.s3_url)
        return open_file

    def _uploads_for(self, url: str) -> _Uploads:
        uploads = self.uploads.get(url)
        if uploads is None:
            uploader = S3Uploader(
                url,
                root=self.root,
                endpoint_url=self.s3_endpoint_url,
                region=self.s3_region,
                client=self.s3_client,
                pattern="*.jsonl",
                suffixes=(".jsonl",),
                setting="capture.s3_url",
            )
            uploads = self.uploads[url] = _Uploads(uploader)
        return uploads

    def _close(self, key: tuple[str, str]) -> None:
        open_file = self.files.pop(key, None)
        if open_file is None:
            return
        with contextlib.suppress(OSError):
            open_file.handle.close()
        self.stats.files_closed += 1
        if open_file.s3_url is not None:
            self.uploads[open_file.s3_url].pending.append((open_file.path, 0.0, 0))

    def _close_all(self) -> None:
        for key in list(self.files):
            self._close(key)
        self._upload_due(time.time(), final=True)

    def _upload_due(self, now: float, final: bool = False) -> None:
        for uploads in self.uploads.values():
            waiting: deque[tuple[Path, float, int]] = deque()
            while uploads.pending:
                path, due, tries = uploads.pending.popleft()
                if due > now and not final:
                    waiting.append((path, due, tries))
                    continue
                if uploads.uploader.upload(path):
                    self.stats.uploads += 1
                    if self.metrics is not None:
                        self.metrics.uploaded.inc()
                    continue
                self.stats.upload_failures += 1
                if self.metrics is not None:
                    self.metrics.upload_failures.inc()
                backoff = min(300.0, 2.0 ** min(tries, 8))
                waiting.append((path, now + backoff, tries + 1))
            uploads.pending = waiting
