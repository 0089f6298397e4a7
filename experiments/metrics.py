"""GET /metrics: Prometheus text, derived from Redis at scrape time, plus the process's own.

The experiment metrics are not counted in process memory. Request, decision,
error and latency numbers come from the decision stream (through the same
incremental ledger the stats use), reward numbers from the joiner's counters,
lags from the consumer groups on the streams. So with several router or
control-plane workers on one port, any worker answers a scrape with the totals
of all of them, and the router's hot path does no extra work for them.

What never reaches Redis is counted in process: the router's losses and swaps
(`banditgate_router_*`, see router/metrics.py). Under `banditgate serve` the
composition root puts the process's `ProcessMetrics` in `app.state.process_metrics`
and they are appended here; banditgate/metrics.py says how several workers add up.

Not covered here: requests a router rejects before making a decision (bad JSON,
unknown experiment) leave no trace in Redis.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from redis.exceptions import ResponseError

from banditgate import keys
from banditgate.contracts import TRAINER_CHANGES, TRAINER_GROUP, JoinCounter
from banditgate.metrics import ProcessMetrics
from banditgate.redis import Redis, stream_id_ms
from banditgate.spec import ExperimentSpec
from experiments.ledger import BUCKET_MS, LATENCY_BUCKETS_S, Ledger, join_counters, read_after
from experiments.lifecycle import status_of
from experiments.monitor_api import latest_reports
from experiments.service import ControlService, Service
from experiments.shadow_results import LATENCY_EDGES_MS, ShadowTally
from experiments.stats import latency_quantile, srm

log = logging.getLogger(__name__)

LAG_COUNT_CAP = 100_000


@dataclass
class GroupLag:
    stream: str  # decisions | joined
    group: str
    lag_entries: int
    lag_seconds: float
    pending: int


LOAD_WINDOW_S = 60


@dataclass
class ArmLoad:
    """An arm's recent load, for autoscalers: the last LOAD_WINDOW_S of decisions."""

    requests_per_second: float
    latency_p50_s: float | None
    latency_p99_s: float | None
    instances: int | None

    @property
    def per_instance(self) -> float | None:
        return self.requests_per_second / self.instances if self.instances else None


def arm_load(spec: ExperimentSpec, ledger: Ledger, now_ms: int) -> dict[str, ArmLoad]:
    """Requests per second and latency percentiles per arm over the last full minute of
    10 s buckets (the bucket in progress is left out, so the rate does not sag)."""
    end = now_ms - now_ms % BUCKET_MS
    recent = ledger.merged(end - LOAD_WINDOW_S * 1000, end)
    out = {}
    for arm in spec.arms:
        tally = recent.arms.get(arm.name)
        histogram = recent.latency.get(arm.name)
        p50 = latency_quantile(histogram, 0.5)
        p99 = latency_quantile(histogram, 0.99)
        out[arm.name] = ArmLoad(
            requests_per_second=(tally.decisions if tally else 0) / LOAD_WINDOW_S,
            latency_p50_s=p50 / 1000 if p50 is not None else None,
            latency_p99_s=p99 / 1000 if p99 is not None else None,
            instances=arm.instances,
        )
    return out


@dataclass
class ExperimentMetrics:
    name: str
    mode: str
    status: str
    policy_version: int | None
    lifetime: dict[str, Any]
    counters: dict[str, int]
    groups: list[GroupLag] = field(default_factory=list)
    lengths: dict[str, int] = field(default_factory=dict)
    srm: dict[str, Any] = field(default_factory=dict)
    changes_detected: int = 0
    shadow: dict[str, ShadowTally] = field(default_factory=dict)  # by shadow arm, lifetime
    load: dict[str, ArmLoad] = field(default_factory=dict)  # by arm, recent
    monitor: dict[str, Any] = field(default_factory=dict)  # by arm, the latest check
    quality: dict[str, Any] = field(default_factory=dict)  # by arm, the latest quality report


async def group_lags(redis: Redis, stream_key: str, stream: str, now_ms: int) -> list[GroupLag]:
    """Per consumer group: entries not yet delivered, the age of the oldest one, and pending."""
    try:
        groups = await redis.xinfo_groups(stream_key)
    except ResponseError:
        return []  # no such stream yet
    out: list[GroupLag] = []
    for info in groups:
        name = _text(info.get("name"))
        last = _text(info.get("last-delivered-id")) or "0-0"
        after = await read_after(redis, stream_key, last, 1)
        lag = info.get("lag")
        if lag is None:  # Redis < 7 has no lag field: count, up to a cap
            lag = len(await read_after(redis, stream_key, last, LAG_COUNT_CAP))
        oldest_ms = stream_id_ms(after[0][0]) if after else None
        out.append(
            GroupLag(
                stream=stream,
                group=name,
                lag_entries=int(lag),
                lag_seconds=max(now_ms - oldest_ms, 0) / 1000 if oldest_ms is not None else 0.0,
                pending=int(info.get("pending", 0)),
            )
        )
    return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value) if value is not None else ""


def _srm_of(
    spec: ExperimentSpec, override: dict[str, Any] | None, ledger: Ledger
) -> dict[str, Any]:
    return srm(spec, override, ledger.merged())


async def gather(service: ControlService) -> list[ExperimentMetrics]:
    now_ms = int(time.time() * 1000)
    out: list[ExperimentMetrics] = []
    redis = service.redis
    for name in await service.store.names():
        spec = await service.store.find(name)
        if spec is None:
            continue
        override = await service.store.get_override(name)
        async with service.stats.open(spec) as ledger:
            lifetime = copy.deepcopy(ledger.lifetime)
            shadow = copy.deepcopy(ledger.shadow_lifetime)
            load = arm_load(spec, ledger, now_ms)
            check = await asyncio.to_thread(_srm_of, spec, override, ledger)
        metrics = ExperimentMetrics(
            name=name,
            mode=spec.mode,
            status=status_of(override),
            policy_version=await service.registry.current_version(name),
            lifetime=lifetime,
            counters=await join_counters(redis, name),
            srm=check,
            changes_detected=int(await redis.hget(keys.trainer_state(name), TRAINER_CHANGES) or 0),
            shadow=shadow,
            load=load,
            monitor=await latest_reports(redis, name),
            quality=await latest_reports(redis, name, keys.monitor_quality(name)),
        )
        for stream, key in (("decisions", keys.decisions(name)), ("joined", keys.joined(name))):
            metrics.groups += await group_lags(redis, key, stream, now_ms)
            metrics.lengths[stream] = int(await redis.xlen(key))
        out.append(metrics)
    return out


def families(experiments: Iterable[ExperimentMetrics]) -> list[Metric]:
    ea = ["experiment", "arm"]
    decisions = CounterMetricFamily(
        "banditgate_decisions", "Decisions logged, by chosen arm.", labels=ea
    )
    requests = CounterMetricFamily(
        "banditgate_requests",
        "Routed requests by chosen arm and response status class.",
        labels=[*ea, "code"],
    )
    errors = CounterMetricFamily(
        "banditgate_errors", "Routed requests that failed (5xx or no backend answer).", labels=ea
    )
    latency = HistogramMetricFamily(
        "banditgate_request_latency_seconds", "Backend latency seen by the router.", labels=ea
    )
    joined = CounterMetricFamily(
        "banditgate_joined", "Joined examples (decision + reward).", labels=ea
    )
    rewarded = CounterMetricFamily(
        "banditgate_joined_rewarded",
        "Joined examples with a real reward, not the default.",
        labels=ea,
    )
    reward = SummaryMetricFamily(
        "banditgate_reward", "Rewards of joined examples (sum/count is the mean).", labels=ea
    )
    e = ["experiment"]
    received = CounterMetricFamily("banditgate_rewards_received", "Rewards received.", labels=e)
    late = CounterMetricFamily("banditgate_rewards_late", "Rewards after the window.", labels=e)
    orphaned = CounterMetricFamily(
        "banditgate_rewards_orphaned", "Rewards for no known decision.", labels=e
    )
    duplicate = CounterMetricFamily("banditgate_rewards_duplicate", "Duplicate rewards.", labels=e)
    policy = GaugeMetricFamily(
        "banditgate_policy_version", "Policy version being served.", labels=e
    )
    info = GaugeMetricFamily(
        "banditgate_experiment_info", "Experiment mode and status.", labels=[*e, "mode", "status"]
    )
    length = GaugeMetricFamily(
        "banditgate_stream_length", "Entries in the stream.", labels=[*e, "stream"]
    )
    egs = [*e, "stream", "group"]
    lag_entries = GaugeMetricFamily(
        "banditgate_consumer_lag_entries",
        "Stream entries not yet delivered to the group.",
        labels=egs,
    )
    lag_seconds = GaugeMetricFamily(
        "banditgate_consumer_lag_seconds", "Age of the oldest entry not yet delivered.", labels=egs
    )
    pending = GaugeMetricFamily(
        "banditgate_consumer_pending", "Entries delivered but not acknowledged.", labels=egs
    )
    joiner = GaugeMetricFamily(
        "banditgate_joiner_lag_seconds", "Decisions-stream lag (largest over its groups).", labels=e
    )
    trainer = GaugeMetricFamily(
        "banditgate_trainer_lag_seconds",
        "Joined-stream lag of the trainer's consumer group.",
        labels=e,
    )
    srm_flag = GaugeMetricFamily(
        "banditgate_srm_flagged", "1 when the sample-ratio-mismatch check fails.", labels=e
    )
    srm_p = GaugeMetricFamily("banditgate_srm_p_value", "Sample-ratio-mismatch p-value.", labels=e)
    changes = CounterMetricFamily(
        "banditgate_trainer_changes_detected",
        "Changes in an arm's reward the trainer detected (and forgot the old data for).",
        labels=e,
    )
    rps = GaugeMetricFamily(
        "banditgate_arm_requests_per_second",
        f"Requests routed to the arm per second over the last {LOAD_WINDOW_S} s.",
        labels=ea,
    )
    p50 = GaugeMetricFamily(
        "banditgate_arm_latency_p50_seconds",
        f"The arm's median latency over the last {LOAD_WINDOW_S} s.",
        labels=ea,
    )
    p99 = GaugeMetricFamily(
        "banditgate_arm_latency_p99_seconds",
        f"The arm's 99th-percentile latency over the last {LOAD_WINDOW_S} s.",
        labels=ea,
    )
    instances = GaugeMetricFamily(
        "banditgate_arm_instances", "Instances serving the arm, as its spec declares.", labels=ea
    )
    per_instance = GaugeMetricFamily(
        "banditgate_arm_invocations_per_instance",
        "Requests per second per declared instance (like SageMaker's InvocationsPerInstance, "
        "per second rather than per minute).",
        labels=ea,
    )
    violations = GaugeMetricFamily(
        "banditgate_monitor_violations",
        "Data-quality and drift violations in the arm's latest monitoring check.",
        labels=ea,
    )
    checked = GaugeMetricFamily(
        "banditgate_monitor_records",
        "Captured records the arm's latest monitoring check read.",
        labels=ea,
    )
    distance = GaugeMetricFamily(
        "banditgate_monitor_distance",
        "Each feature's distance from the baseline in the latest check (KS or L-infinity).",
        labels=[*ea, "feature"],
    )
    checked_at = GaugeMetricFamily(
        "banditgate_monitor_last_check_timestamp_seconds",
        "When the arm's latest monitoring check finished (Unix time).",
        labels=ea,
    )
    quality = GaugeMetricFamily(
        "banditgate_quality",
        "The arm's model quality on ground-truth labels in the latest window "
        "(metric: accuracy, precision, recall, f1, mae, rmse).",
        labels=[*ea, "metric"],
    )
    labelled = GaugeMetricFamily(
        "banditgate_quality_labels",
        "Labelled predictions the arm's latest quality report scored.",
        labels=ea,
    )
    quality_alert = GaugeMetricFamily(
        "banditgate_quality_alert",
        "1 when the arm's quality dropped against the previous window by more than alert_drop.",
        labels=ea,
    )
    mirrored = CounterMetricFamily(
        "banditgate_shadow_mirrored", "Requests mirrored to a shadow arm.", labels=ea
    )
    compared = CounterMetricFamily(
        "banditgate_shadow_compared",
        "Mirrored requests whose bodies were compared with the primary's.",
        labels=ea,
    )
    agreed = CounterMetricFamily(
        "banditgate_shadow_agreed",
        "Compared mirrored requests whose body agreed with the primary's.",
        labels=ea,
    )
    status_differs = CounterMetricFamily(
        "banditgate_shadow_status_differs",
        "Mirrored requests where the shadow's status differed from the primary's.",
        labels=ea,
    )
    shadow_errors = CounterMetricFamily(
        "banditgate_shadow_errors",
        "Mirrored requests the shadow failed (5xx or no answer).",
        labels=ea,
    )
    shadow_latency = HistogramMetricFamily(
        "banditgate_shadow_latency_seconds", "Shadow arms' latency on mirrored requests.", labels=ea
    )

    for m in experiments:
        for arm, life in sorted(m.lifetime.items()):
            labels = [m.name, arm]
            decisions.add_metric(labels, life.decisions)
            for code, count in sorted(life.codes.items()):
                requests.add_metric([*labels, code], count)
            errors.add_metric(labels, life.errors)
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for edge, count in zip(
                [*map(str, LATENCY_BUCKETS_S), "+Inf"], life.latency_counts, strict=True
            ):
                cumulative += count
                buckets.append((edge, cumulative))
            latency.add_metric(labels, buckets, life.latency_sum_s)
            joined.add_metric(labels, life.joined)
            rewarded.add_metric(labels, life.rewarded)
            reward.add_metric(labels, life.joined, life.reward_sum)
        e_label = [m.name]
        received.add_metric(e_label, m.counters.get(JoinCounter.REWARDS_RECEIVED, 0))
        late.add_metric(e_label, m.counters.get(JoinCounter.REWARDS_LATE, 0))
        orphaned.add_metric(e_label, m.counters.get(JoinCounter.REWARDS_ORPHANED, 0))
        duplicate.add_metric(e_label, m.counters.get(JoinCounter.REWARDS_DUPLICATE, 0))
        policy.add_metric(e_label, m.policy_version or 0)
        info.add_metric([m.name, m.mode, m.status], 1)
        for stream, count in m.lengths.items():
            length.add_metric([m.name, stream], count)
        for g in m.groups:
            group_labels = [m.name, g.stream, g.group]
            lag_entries.add_metric(group_labels, g.lag_entries)
            lag_seconds.add_metric(group_labels, g.lag_seconds)
            pending.add_metric(group_labels, g.pending)
        on_decisions = [g.lag_seconds for g in m.groups if g.stream == "decisions"]
        if on_decisions:
            joiner.add_metric(e_label, max(on_decisions))
        training = [g for g in m.groups if g.stream == "joined" and g.group == TRAINER_GROUP]
        if training:
            trainer.add_metric(e_label, training[0].lag_seconds)
        for arm, load in m.load.items():
            labels = [m.name, arm]
            rps.add_metric(labels, load.requests_per_second)
            if load.latency_p50_s is not None:
                p50.add_metric(labels, load.latency_p50_s)
            if load.latency_p99_s is not None:
                p99.add_metric(labels, load.latency_p99_s)
            if load.instances is not None:
                instances.add_metric(labels, load.instances)
                per_instance.add_metric(labels, load.per_instance or 0.0)
        for arm, report in sorted(m.monitor.items()):
            labels = [m.name, arm]
            violations.add_metric(labels, len(report.get("violations") or []))
            checked.add_metric(labels, report.get("records", 0))
            checked_at.add_metric(labels, report.get("finished_ms", 0) / 1000)
            for feature, value in sorted((report.get("distances") or {}).items()):
                distance.add_metric([*labels, feature], value)
        for arm, report in sorted(m.quality.items()):
            labels = [m.name, arm]
            current = report.get("current") or {}
            labelled.add_metric(labels, current.get("n", 0))
            quality_alert.add_metric(labels, 1.0 if report.get("alert") else 0.0)
            for metric in ("accuracy", "precision", "recall", "f1", "mae", "rmse"):
                if isinstance(current.get(metric), int | float):
                    quality.add_metric([*labels, metric], current[metric])
        for arm, tally in sorted(m.shadow.items()):
            labels = [m.name, arm]
            mirrored.add_metric(labels, tally.mirrored)
            compared.add_metric(labels, tally.compared)
            agreed.add_metric(labels, tally.agreed)
            status_differs.add_metric(labels, tally.status_differs)
            shadow_errors.add_metric(labels, tally.shadow_errors)
            cumulative = 0
            shadow_buckets: list[tuple[str, float]] = []
            for edge_ms, count in zip(
                [*LATENCY_EDGES_MS, math.inf], tally.shadow_histogram, strict=True
            ):
                cumulative += count
                edge = "+Inf" if math.isinf(edge_ms) else str(edge_ms / 1000)
                shadow_buckets.append((edge, cumulative))
            shadow_latency.add_metric(labels, shadow_buckets, tally.shadow_latency_ms / 1000)
        srm_flag.add_metric(e_label, 1.0 if m.srm.get("flagged") else 0.0)
        changes.add_metric(e_label, m.changes_detected)
        if m.srm.get("p_value") is not None:
            srm_p.add_metric(e_label, m.srm["p_value"])
    return [
        decisions,
        requests,
        errors,
        latency,
        joined,
        rewarded,
        reward,
        received,
        late,
        orphaned,
        duplicate,
        policy,
        info,
        length,
        lag_entries,
        lag_seconds,
        pending,
        joiner,
        trainer,
        srm_flag,
        srm_p,
        changes,
        quality,
        labelled,
        quality_alert,
        violations,
        checked,
        distance,
        checked_at,
        rps,
        p50,
        p99,
        instances,
        per_instance,
        mirrored,
        compared,
        agreed,
        status_differs,
        shadow_errors,
        shadow_latency,
    ]


class _Snapshot:
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> list[Metric]:
        return self.metrics


def render(experiments: Iterable[ExperimentMetrics]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(families(experiments)))
    return generate_latest(registry)


def routes() -> APIRouter:
    router = APIRouter(tags=["metrics"])

    @router.get("/metrics", response_class=Response)
    async def metrics(request: Request, service: Service) -> Response:
        """Prometheus exposition of every experiment (derived from Redis; same on every
        worker), then this process's own metrics, if it has any."""
        body = render(await gather(service))
        process: ProcessMetrics | None = getattr(request.app.state, "process_metrics", None)
        if process is not None:
            body += process.render()
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return router
