"""Tallies of an experiment's decision and joined streams, read incrementally from Redis.

A `Ledger` per experiment reads each stream from where it stopped (XRANGE after
its cursor), so a dashboard refreshing every few seconds costs only the new
entries. Decisions are tallied in 10 s buckets by decision time, joined examples
by join time, shadow results (experiments.shadow_results) by result time; buckets older than a day merge into 10 min buckets. Lifetime totals
per arm feed the Prometheus counters. The statistics on top are in
experiments.stats.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, cast

import numpy as np
import orjson

from banditgate import keys
from banditgate.contracts import JoinCounter
from banditgate.events import (
    Decision,
    Joined,
    decode_decision_batch,
    decode_joined,
    decode_shadow_batch,
)
from banditgate.redis import Redis, stream_id_ms
from banditgate.spec import ExperimentSpec
from experiments import shadow_results
from experiments.sequential import SequentialComparison, Units
from experiments.shadow_results import ShadowTally

log = logging.getLogger(__name__)

BUCKET_MS = 10_000
COARSE_MS = 600_000
FINE_HORIZON_MS = 24 * 3600 * 1000
LATENCY_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
MAX_SIGNATURES = 32
SEQUENTIAL_MODES = frozenset({"ab", "canary"})
DECISION_PAGE = 2  # batches of up to 2000 decisions each
JOINED_PAGE = 1000
SHADOW_PAGE = 2  # batches of shadow results, like decisions


@dataclass(slots=True)
class ArmTally:
    """Sums for one arm in one bucket; every field adds."""

    decisions: int = 0
    forced: int = 0
    errors: int = 0
    randomized: int = 0
    sampled_p: float = 0.0  # sum of p(chosen) over randomised decisions choosing the arm
    action_p: float = 0.0  # sum of pmf[arm] over all randomised decisions
    latency_ms: float = 0.0
    joined: int = 0
    rewarded: int = 0
    r_n: int = 0  # randomised joined examples (the inference sample)
    r_sum: float = 0.0
    r_sum2: float = 0.0
    nonbinary: int = 0
    w: float = 0.0
    w2: float = 0.0
    wr: float = 0.0
    w2r: float = 0.0
    w2r2: float = 0.0

    def add(self, other: ArmTally) -> None:
        for f in _ARM_FIELDS:
            setattr(self, f, getattr(self, f) + getattr(other, f))


_ARM_FIELDS = [f.name for f in fields(ArmTally)]


@dataclass
class PropensityTally:
    """For the SRM test against logged propensities, per arm set."""

    chosen: np.ndarray
    sum_p: np.ndarray
    sum_pp: np.ndarray

    @classmethod
    def empty(cls, k: int) -> PropensityTally:
        return cls(np.zeros(k), np.zeros(k), np.zeros((k, k)))

    def add(self, other: PropensityTally) -> None:
        self.chosen += other.chosen
        self.sum_p += other.sum_p
        self.sum_pp += other.sum_pp


@dataclass
class Bucket:
    start_ms: int
    arms: dict[str, ArmTally] = field(default_factory=dict)
    decisions: int = 0
    randomized: int = 0
    joined: int = 0
    propensity: dict[tuple[str, ...], PropensityTally] = field(default_factory=dict)
    # (arms, pmf) -> chosen counts, for the SRM test against configured weights.
    signatures: dict[tuple[tuple[str, ...], tuple[float, ...]], list[int]] = field(
        default_factory=dict
    )
    signatures_overflow: bool = False
    shadow: dict[str, ShadowTally] = field(default_factory=dict)  # by shadow arm
    # Per arm: decisions counted by latency bucket (LATENCY_BUCKETS_S, then the rest).
    latency: dict[str, np.ndarray] = field(default_factory=dict)

    def arm(self, name: str) -> ArmTally:
        tally = self.arms.get(name)
        if tally is None:
            tally = self.arms[name] = ArmTally()
        return tally

    def add(self, other: Bucket) -> None:
        for name, tally in other.arms.items():
            self.arm(name).add(tally)
        self.decisions += other.decisions
        self.randomized += other.randomized
        self.joined += other.joined
        for arms, theirs in other.propensity.items():
            mine = self.propensity.get(arms)
            if mine is None:
                mine = self.propensity[arms] = PropensityTally.empty(len(arms))
            mine.add(theirs)
        self.signatures_overflow |= other.signatures_overflow
        for arm_name, histogram in other.latency.items():
            mine_latency = self.latency.get(arm_name)
            if mine_latency is None:
                self.latency[arm_name] = histogram.copy()
            else:
                mine_latency += histogram
        for shadow_arm, shadow_tally in other.shadow.items():
            self.shadow.setdefault(shadow_arm, ShadowTally()).add(shadow_tally)
        for signature, counts in other.signatures.items():
            existing = self.signatures.get(signature)
            if existing is None:
                self.signatures[signature] = list(counts)
            else:
                for i, c in enumerate(counts):
                    existing[i] += c
        if len(self.signatures) > MAX_SIGNATURES:
            self.signatures_overflow = True


@dataclass
class LifetimeArm:
    """Totals since the ledger started reading, for Prometheus counters."""

    decisions: int = 0
    errors: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    latency_sum_s: float = 0.0
    joined: int = 0
    rewarded: int = 0
    reward_sum: float = 0.0


class Ledger:
    """Tallies of one experiment's streams; fed in stream order."""

    def __init__(self, name: str, *, created_ms: int | None = None) -> None:
        self.name = name
        self.created_ms = created_ms
        self.decisions_cursor = "0-0"
        self.joined_cursor = "0-0"
        self.fine: dict[int, Bucket] = {}
        self.coarse: dict[int, Bucket] = {}
        self.lifetime: dict[str, LifetimeArm] = {}
        self.shadow_cursor = "0-0"
        self.shadow_lifetime: dict[str, ShadowTally] = {}
        self.sequential: dict[tuple[str, str], SequentialComparison] = {}
        self.reward_bounds: tuple[float, float] = (0.0, 1.0)
        self.control: str | None = None
        self.lock = asyncio.Lock()
        self.last_decision_ms = 0
        self.first_decision_ms: int | None = None
        self.last_joined_ms = 0

    # -- feeding ---------------------------------------------------------------------------

    def _bucket(self, ts_ms: int, now_ms: int) -> Bucket:
        if ts_ms < now_ms - FINE_HORIZON_MS:
            start = ts_ms - ts_ms % COARSE_MS
            table = self.coarse
        else:
            start = ts_ms - ts_ms % BUCKET_MS
            table = self.fine
        bucket = table.get(start)
        if bucket is None:
            bucket = table[start] = Bucket(start)
        return bucket

    def _life(self, arm: str) -> LifetimeArm:
        tally = self.lifetime.get(arm)
        if tally is None:
            tally = self.lifetime[arm] = LifetimeArm()
        return tally

    def feed_decisions(self, decisions: Iterable[Decision], now_ms: int | None = None) -> None:
        """Tally decisions; grouped by (bucket, arm set) so the sums run in numpy."""
        now_ms = now_ms if now_ms is not None else wall_ms()
        groups: dict[tuple[int, tuple[str, ...]], tuple[Bucket, list[Decision]]] = {}
        for d in decisions:
            try:
                ts, arms = int(d["ts_ms"]), tuple(d["arms"])
            except (KeyError, TypeError, ValueError):
                log.warning("%s: skipping a malformed decision", self.name)
                continue
            bucket = self._bucket(ts, now_ms)
            # A fine and a coarse bucket may share a start time; the object identifies it.
            groups.setdefault((id(bucket), arms), (bucket, []))[1].append(d)
        for (_, arms), (bucket, rows) in groups.items():
            self._feed_group(bucket, arms, rows)

    def _feed_group(self, bucket: Bucket, arms: tuple[str, ...], rows: list[Decision]) -> None:
        k = len(arms)
        position = {arm: i for i, arm in enumerate(arms)}
        kept = [d for d in rows if len(d.get("pmf", ())) == k and d.get("chosen") in position]
        if len(kept) < len(rows):
            log.warning("%s: skipping %d malformed decisions", self.name, len(rows) - len(kept))
        n = len(kept)
        if n == 0:
            return
        chosen = np.fromiter((position[d["chosen"]] for d in kept), np.int64, n)
        pmf = np.asarray([d["pmf"] for d in kept], dtype=np.float64).reshape(n, k)
        forced = np.fromiter((bool(d.get("forced")) for d in kept), bool, n)
        status = np.fromiter((int(d.get("status", 0)) for d in kept), np.int64, n)
        failed = (status >= 500) | np.fromiter(("error" in d for d in kept), bool, n)
        latency_ms = np.fromiter((float(d.get("latency_ms", 0.0)) for d in kept), np.float64, n)
        stamps = [int(d["ts_ms"]) for d in kept]
        self.last_decision_ms = max(self.last_decision_ms, max(stamps))
        earliest = min(stamps)
        if self.first_decision_ms is None or earliest < self.first_decision_ms:
            self.first_decision_ms = earliest

        def per_arm(
            mask: np.ndarray | None = None, weights: np.ndarray | None = None
        ) -> np.ndarray:
            picked = chosen if mask is None else chosen[mask]
            w = weights if mask is None or weights is None else weights[mask]
            return np.bincount(picked, weights=w, minlength=k)

        randomized = ~forced
        r_chosen = chosen[randomized]
        r_pmf = pmf[randomized]
        counts = per_arm()
        columns = {
            "decisions": counts,
            "forced": per_arm(forced),
            "errors": per_arm(failed),
            "latency_ms": per_arm(None, latency_ms),
            "randomized": np.bincount(r_chosen, minlength=k),
            "sampled_p": np.bincount(
                r_chosen, weights=r_pmf[np.arange(len(r_chosen)), r_chosen], minlength=k
            ),
            "action_p": r_pmf.sum(axis=0),
        }
        for i, arm in enumerate(arms):
            tally = bucket.arm(arm)
            tally.decisions += int(columns["decisions"][i])
            tally.forced += int(columns["forced"][i])
            tally.errors += int(columns["errors"][i])
            tally.latency_ms += float(columns["latency_ms"][i])
            tally.randomized += int(columns["randomized"][i])
            tally.sampled_p += float(columns["sampled_p"][i])
            tally.action_p += float(columns["action_p"][i])
        bucket.decisions += n
        bucket.randomized += len(r_chosen)
        if len(r_chosen):
            propensity = bucket.propensity.get(arms)
            if propensity is None:
                propensity = bucket.propensity[arms] = PropensityTally.empty(k)
            propensity.chosen += columns["randomized"]
            propensity.sum_p += columns["action_p"]
            propensity.sum_pp += r_pmf.T @ r_pmf
            self._signatures(bucket, arms, r_pmf, r_chosen)
        # Latency histograms per arm (percentiles over time), lifetime totals for Prometheus.
        edges = np.asarray(LATENCY_BUCKETS_S)
        slot = np.searchsorted(edges, latency_ms / 1000.0, side="left")
        classes = status // 100
        for i, arm in enumerate(arms):
            if not counts[i]:
                continue
            life = self._life(arm)
            mine = chosen == i
            life.decisions += int(counts[i])
            life.errors += int(columns["errors"][i])
            life.latency_sum_s += float(columns["latency_ms"][i]) / 1000.0
            histogram = np.bincount(slot[mine], minlength=len(edges) + 1)
            held = bucket.latency.get(arm)
            if held is None:
                bucket.latency[arm] = histogram
            else:
                held += histogram
            for j, c in enumerate(histogram):
                life.latency_counts[j] += int(c)
            values, tallies = np.unique(classes[mine], return_counts=True)
            for value, count in zip(values, tallies, strict=True):
                code = f"{int(value)}xx"
                life.codes[code] = life.codes.get(code, 0) + int(count)

    def _signatures(
        self, bucket: Bucket, arms: tuple[str, ...], pmf: np.ndarray, chosen: np.ndarray
    ) -> None:
        """Chosen counts per distinct logged pmf, while there are few (static splits)."""
        if bucket.signatures_overflow:
            return
        if (pmf == pmf[0]).all():  # the usual static split: one pmf, no sort needed
            unique, inverse = pmf[:1], np.zeros(len(pmf), dtype=np.int64)
        else:
            unique, inverse = np.unique(pmf, axis=0, return_inverse=True)
        fresh = [tuple(map(float, row)) for row in unique]
        known = sum(1 for row in fresh if (arms, row) in bucket.signatures)
        if len(bucket.signatures) + len(fresh) - known > MAX_SIGNATURES:
            bucket.signatures_overflow = True
            return
        inverse = inverse.reshape(-1)
        for u, row in enumerate(fresh):
            counts = np.bincount(chosen[inverse == u], minlength=len(arms))
            existing = bucket.signatures.setdefault((arms, row), [0] * len(arms))
            for i, c in enumerate(counts):
                existing[i] += int(c)

    def feed_joined(self, entries: Iterable[tuple[int, Joined]], now_ms: int | None = None) -> None:
        now_ms = now_ms if now_ms is not None else wall_ms()
        low, high = self.reward_bounds
        units: dict[tuple[str, str], list[tuple[float, float, float, float, float]]] = {}
        for joined_ms, j in entries:
            d = j["decision"]
            try:
                arms = list(d["arms"])
                index = arms.index(d["chosen"])
                p = float(d["pmf"][index])
            except (KeyError, ValueError, TypeError, IndexError):
                log.warning("%s: skipping a malformed joined example", self.name)
                continue
            self.last_joined_ms = max(self.last_joined_ms, joined_ms)
            chosen = d["chosen"]
            reward = float(j["reward"])
            bucket = self._bucket(joined_ms, now_ms)
            bucket.joined += 1
            tally = bucket.arm(chosen)
            tally.joined += 1
            life = self._life(chosen)
            life.joined += 1
            life.reward_sum += reward
            if j["rewarded"]:
                tally.rewarded += 1
                life.rewarded += 1
            if d.get("forced") or p <= 0:
                continue
            tally.r_n += 1
            tally.r_sum += reward
            tally.r_sum2 += reward * reward
            if reward not in (0.0, 1.0):
                tally.nonbinary += 1
            w = 1.0 / p
            tally.w += w
            tally.w2 += w * w
            tally.wr += w * reward
            tally.w2r += w * w * reward
            tally.w2r2 += w * w * reward * reward
            if (
                d.get("mode") in SEQUENTIAL_MODES
                and self.control is not None
                and self.control in arms
            ):
                c_index = arms.index(self.control)
                p_c = float(d["pmf"][c_index])
                clipped = min(max(reward, low), high)
                for t_index, treatment in enumerate(arms):
                    p_t = float(d["pmf"][t_index])
                    if treatment == self.control or p_t <= 0 or p_c <= 0:
                        continue
                    units.setdefault((self.control, treatment), []).append(
                        (float(index == t_index), float(index == c_index), clipped, p_t, p_c)
                    )
        for (control, treatment), rows in units.items():
            comparison = self.sequential.get((control, treatment))
            if comparison is None:
                comparison = self.sequential[(control, treatment)] = SequentialComparison(
                    control, treatment, low, high
                )
            columns = np.asarray(rows, dtype=np.float64).T
            comparison.update(Units(*columns))

    def feed_shadow(self, results: Iterable[dict[str, Any]], now_ms: int | None = None) -> None:
        """Tally shadow results (router/shadow.py) by result time and per shadow arm."""
        now_ms = now_ms if now_ms is not None else wall_ms()
        by_bucket: dict[int, tuple[Bucket, list[dict[str, Any]]]] = {}
        for result in results:
            try:
                ts = int(result["ts_ms"])
            except (KeyError, TypeError, ValueError):
                log.warning("%s: skipping a malformed shadow result", self.name)
                continue
            bucket = self._bucket(ts, now_ms)
            by_bucket.setdefault(id(bucket), (bucket, []))[1].append(result)
        for bucket, rows in by_bucket.values():
            skipped = shadow_results.feed(bucket.shadow, rows)
            shadow_results.feed(self.shadow_lifetime, rows)
            if skipped:
                log.warning("%s: skipping %d malformed shadow results", self.name, skipped)

    def compact(self, now_ms: int | None = None) -> None:
        now_ms = now_ms if now_ms is not None else wall_ms()
        horizon = now_ms - FINE_HORIZON_MS
        for start in [s for s in self.fine if s + BUCKET_MS <= horizon]:
            bucket = self.fine.pop(start)
            coarse_start = start - start % COARSE_MS
            target = self.coarse.get(coarse_start)
            if target is None:
                target = self.coarse[coarse_start] = Bucket(coarse_start)
            target.add(bucket)

    # -- reading ---------------------------------------------------------------------------

    def buckets(self, start_ms: int | None = None, end_ms: int | None = None) -> list[Bucket]:
        chosen = [
            b
            for table in (self.coarse, self.fine)
            for b in table.values()
            if (start_ms is None or b.start_ms >= start_ms)
            and (end_ms is None or b.start_ms < end_ms)
        ]
        return sorted(chosen, key=lambda b: b.start_ms)

    def merged(self, start_ms: int | None = None, end_ms: int | None = None) -> Bucket:
        total = Bucket(start_ms or 0)
        for bucket in self.buckets(start_ms, end_ms):
            total.add(bucket)
        return total


def wall_ms() -> int:
    return int(time.time() * 1000)


def configure_ledger(ledger: Ledger, spec: ExperimentSpec) -> None:
    """What feeding needs from the spec: the reward range and the control arm."""
    ledger.reward_bounds = (spec.reward.min, spec.reward.max)
    ledger.control = control_arm(spec)


def control_arm(spec: ExperimentSpec) -> str | None:
    if spec.mode == "canary" and spec.canary is not None:
        return spec.canary.baseline
    if spec.mode == "ab":
        return spec.arms[0].name
    return None


StreamEntries = list[tuple[bytes, dict[bytes, bytes]]]


async def read_after(redis: Redis, key: str, after: str, count: int) -> StreamEntries:
    """Entries strictly after the id `after` (oldest first)."""
    entries = await redis.xrange(key, min=f"({after}", count=count)
    return cast(StreamEntries, entries or [])


_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_was_enabled = True


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause Python's cyclic collector while a chunk of stream entries is decoded and tallied.

    orjson builds thousands of small, acyclic dicts per decision batch; reference
    counting frees them, but their churn triggers full-heap collections that hold the
    GIL for 50-100+ ms, stalling the event loop (and a router sharing it). Pausing
    the collector for one page (a read and a few ms of tallying) removes those
    stalls: see BENCHMARKS.md. Re-entrant and thread-safe; restores the prior state.
    """
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


def _feed_decision_entries(ledger: Ledger, entries: StreamEntries, now_ms: int) -> None:
    with cyclic_gc_paused():
        _feed_decision_batches(ledger, entries, now_ms)


def _feed_decision_batches(ledger: Ledger, entries: StreamEntries, now_ms: int) -> None:
    for entry_id, fields_ in entries:
        try:
            batch = decode_decision_batch(fields_)
        except (KeyError, orjson.JSONDecodeError):
            log.warning("%s: undecodable decision batch %r", ledger.name, entry_id)
            continue
        ledger.feed_decisions(batch, now_ms)


def _feed_shadow_entries(ledger: Ledger, entries: StreamEntries, now_ms: int) -> None:
    with cyclic_gc_paused():
        for entry_id, fields_ in entries:
            try:
                batch = decode_shadow_batch(fields_)
            except (KeyError, orjson.JSONDecodeError):
                log.warning("%s: undecodable shadow batch %r", ledger.name, entry_id)
                continue
            ledger.feed_shadow(cast(list[dict[str, Any]], batch), now_ms)


def _feed_joined_entries(ledger: Ledger, entries: StreamEntries, now_ms: int) -> None:
    with cyclic_gc_paused():
        decoded: list[tuple[int, Joined]] = []
        for entry_id, fields_ in entries:
            try:
                decoded.append((stream_id_ms(entry_id), decode_joined(fields_)))
            except (KeyError, ValueError, orjson.JSONDecodeError):
                log.warning("%s: undecodable joined entry %r", ledger.name, entry_id)
        ledger.feed_joined(decoded, now_ms)


async def refresh(redis: Redis, ledger: Ledger) -> None:
    """Read what was appended to the experiment's streams since the last refresh.

    Decoding and tallying run in a worker thread, a page at a time: the event loop
    (which `banditgate serve` shares with the router) keeps serving meanwhile.
    """
    now_ms = wall_ms()
    for key, page, feed, cursor in (
        (keys.decisions(ledger.name), DECISION_PAGE, _feed_decision_entries, "decisions_cursor"),
        (keys.joined(ledger.name), JOINED_PAGE, _feed_joined_entries, "joined_cursor"),
        (keys.shadow_results(ledger.name), SHADOW_PAGE, _feed_shadow_entries, "shadow_cursor"),
    ):
        while True:
            # A page's objects are born and freed inside one pause: none gets promoted to
            # an old generation, so none triggers a full collection later.
            with cyclic_gc_paused():
                entries = await read_after(redis, key, getattr(ledger, cursor), page)
                if entries:
                    await asyncio.to_thread(feed, ledger, entries, now_ms)
                    setattr(ledger, cursor, entries[-1][0].decode())
                done = len(entries) < page
                del entries
            if done:
                break
    ledger.compact(now_ms)


class StatsBook:
    """The ledgers of every experiment this process has been asked about."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.ledgers: dict[str, Ledger] = {}

    @asynccontextmanager
    async def open(self, spec: ExperimentSpec) -> AsyncIterator[Ledger]:
        """The experiment's ledger, up to date and locked for the block (a new one if re-created).

        Read it only inside the block: a refresh for another caller mutates it in a thread.
        """
        created = await self._created_ms(spec.name)
        ledger = self.ledgers.get(spec.name)
        if ledger is None or ledger.created_ms != created:
            ledger = self.ledgers[spec.name] = Ledger(spec.name, created_ms=created)
        async with ledger.lock:
            configure_ledger(ledger, spec)
            await refresh(self.redis, ledger)
            yield ledger

    def forget(self, name: str) -> None:
        self.ledgers.pop(name, None)

    async def _created_ms(self, name: str) -> int | None:
        raw = await self.redis.lindex(keys.spec_history(name), 0)
        if raw is None:
            return None
        try:
            return int(orjson.loads(raw)["ts_ms"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None


async def join_counters(redis: Redis, name: str) -> dict[str, int]:
    """The joiner's counters; a field it has not written yet reads as 0."""
    raw = cast(dict[bytes, bytes], await redis.hgetall(keys.join_counters(name)))
    counters = {counter.value: 0 for counter in JOIN_COUNTER_FIELDS}
    for key, value in raw.items():
        try:
            counters[key.decode()] = int(float(value))
        except ValueError:
            continue
    return counters


# Always reported, as 0 before the joiner first writes them.
JOIN_COUNTER_FIELDS = (
    JoinCounter.REWARDS_RECEIVED,
    JoinCounter.REWARDS_LATE,
    JoinCounter.REWARDS_ORPHANED,
    JoinCounter.REWARDS_DUPLICATE,
    JoinCounter.JOINED,
    JoinCounter.JOINED_REWARDED,
    JoinCounter.JOINED_DEFAULT,
)
