"""The monitoring worker (part of `banditgate workers`): checks each arm's captured traffic
against the experiment's baseline on the spec's schedule.

For every experiment whose spec has `monitor:` (and `capture:`) and a baseline stored
(`banditgate monitor baseline`), every `monitor.every_s` one worker (a lease in Redis
keeps it to one across hosts) reads the arm's capture files of the last `window_s`
from `{data_dir}/capture` (the worker runs where the routers write, as under `serve`,
or on a shared volume), profiles them, and writes, per arm,

    {data_dir}/monitor/{experiment}/{arm}/{yyyymmddThhmmss}/statistics.json
                                                           /constraint_violations.json

and the latest report to Redis, where /stats, /metrics and the dashboard read it.
A check that fails (unreadable files, a full disk) is logged and retried on the next
tick; it never stops the other workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import orjson

from banditgate import keys
from banditgate.redis import Redis
from banditgate.settings import CoreSettings
from banditgate.spec import ExperimentSpec
from banditgate.watcher import ExperimentWatcher
from monitor.check import check_arm
from monitor.profile import Thresholds
from monitor.quality import alert, predictions, read_labels, score

log = logging.getLogger(__name__)

TICK_S = 1.0


async def load_baseline(redis: Redis, experiment: str) -> dict[str, Any] | None:
    raw = cast(bytes | None, await redis.get(keys.monitor_baseline(experiment)))
    if raw is None:
        return None
    try:
        baseline: dict[str, Any] = orjson.loads(raw)
    except orjson.JSONDecodeError:
        log.warning("%s: the stored baseline is not JSON; set it again", experiment)
        return None
    return baseline


def write_reports(root: Path, experiment: str, arm: str, stamp: str, report: Any) -> Path:
    folder = root / experiment / arm / stamp
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "statistics.json").write_bytes(
        orjson.dumps(report.statistics, option=orjson.OPT_INDENT_2)
    )
    (folder / "constraint_violations.json").write_bytes(
        orjson.dumps({"violations": report.violations}, option=orjson.OPT_INDENT_2)
    )
    return folder


class Monitor:
    def __init__(
        self, redis: Redis, data_dir: Path, *, experiments: list[str] | None = None
    ) -> None:
        self.redis = redis
        self.capture_root = data_dir / "capture"
        self.report_root = data_dir / "monitor"
        self.watcher = ExperimentWatcher(redis, only=experiments)
        self.last_run: dict[str, float] = {}
        self.last_quality: dict[str, float] = {}
        self.runs = 0

    async def run_once(self, spec: ExperimentSpec, now: float | None = None) -> dict[str, Any]:
        """Check every arm of one experiment now; returns the reports by arm."""
        assert spec.monitor is not None
        now = now if now is not None else time.time()
        baseline = await load_baseline(self.redis, spec.name)
        if baseline is None:
            return {}
        monitor = spec.monitor
        window_s = monitor.window_s or monitor.every_s
        thresholds = Thresholds(**monitor.thresholds.model_dump())
        stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%S")
        reports: dict[str, Any] = {}
        for arm in spec.arm_names:
            started = time.time()
            result = await asyncio.to_thread(
                check_arm,
                self.capture_root,
                spec.name,
                arm,
                baseline,
                window_s=window_s,
                thresholds=thresholds,
                features=monitor.features,
                now=now,
            )
            summary = result.summary(started, time.time(), window_s)
            if result.records:
                folder = await asyncio.to_thread(
                    write_reports, self.report_root, spec.name, arm, stamp, result
                )
                summary["report"] = str(folder)
            reports[arm] = summary
        if reports:
            await self.redis.hset(
                keys.monitor_latest(spec.name),
                mapping={arm: orjson.dumps(r) for arm, r in reports.items()},
            )
        self.runs += 1
        return reports

    async def quality_once(self, spec: ExperimentSpec, now: float | None = None) -> dict[str, Any]:
        """Score every arm's captured predictions against the labels posted for them: this
        window and the one before it, with an alert on a drop."""
        assert spec.quality is not None
        now = now if now is not None else time.time()
        quality = spec.quality
        window = quality.window_s
        labels = await read_labels(self.redis, spec.name, int((now - 2 * window) * 1000))

        def iso(ts: float) -> str:
            return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S")

        windows = [(iso(now - 2 * window), iso(now - window)), (iso(now - window), iso(now + 1))]
        reports: dict[str, Any] = {}
        for arm in spec.arm_names:
            predicted = await asyncio.to_thread(
                predictions, self.capture_root, spec.name, arm, quality.prediction, now - 2 * window
            )
            previous, current = score(quality, labels, predicted, windows)
            reports[arm] = {
                "arm": arm,
                "problem": quality.problem,
                "finished_ms": int(time.time() * 1000),
                "window_s": window,
                "current": current,
                "previous": previous,
                "alert": alert(quality, current, previous),
            }
        await self.redis.hset(
            keys.monitor_quality(spec.name),
            mapping={arm: orjson.dumps(r) for arm, r in reports.items()},
        )
        for arm, report in reports.items():
            if report["alert"]:
                log.warning("%s/%s: model quality alert: %s", spec.name, arm, report["alert"])
        return reports

    async def tick(self) -> None:
        now = time.time()
        for name, spec in list(self.watcher.specs.items()):
            if spec.quality is not None and now - self.last_quality.get(name, 0.0) >= (
                spec.quality.every_s
            ):
                self.last_quality[name] = now
                try:
                    await self.quality_once(spec, now)
                except Exception:
                    log.exception("model quality of %s failed; retried next period", name)
            if spec.monitor is None or spec.capture is None:
                continue
            if now - self.last_run.get(name, 0.0) < spec.monitor.every_s:
                continue
            lease = keys.monitor_lease(name)
            if not await self.redis.set(lease, b"1", nx=True, ex=int(spec.monitor.every_s)):
                self.last_run[name] = now  # another worker checks it this period
                continue
            self.last_run[name] = now
            try:
                reports = await self.run_once(spec, now)
            except Exception:
                log.exception("monitoring %s failed; retried next period", name)
                await self.redis.delete(lease)
                continue
            found = sum(len(r["violations"]) for r in reports.values())
            if found:
                log.warning("%s: %d data-quality or drift violations", name, found)

    async def run(self, stop: asyncio.Event) -> None:
        watch = asyncio.create_task(self.watcher.watch(), name="monitor-watch")
        try:
            while not stop.is_set():
                try:
                    await self.tick()
                except Exception:
                    log.exception("monitor tick failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=TICK_S)
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch


async def run(redis: Redis, *, stop: asyncio.Event) -> None:
    settings = CoreSettings()
    monitor = Monitor(redis, settings.data_dir, experiments=settings.experiments)
    log.info("monitor started")
    await monitor.run(stop)
