"""The router's own counters (`banditgate_router_*`): what it lost or changed in memory.

Incremented where the event happens: drops, failed flushes and policy swaps are rare, the
queue gauges are set once per flush attempt, and the one per-request value, the requests
in flight, is a gauge without labels (an autoscaler's signal: it sums over the pods). Exposed by the
process's /metrics (see banditgate/metrics.py for several workers).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from banditgate.metrics import ProcessMetrics


@dataclass(frozen=True)
class WriterMetrics:
    """What a batched stream writer reports."""

    dropped: Counter
    flush_failures: Counter
    pending: Gauge
    unencodable: Counter | None = None
    rejected: Counter | None = None
    spill_bytes: Gauge | None = None
    redis_up: Gauge | None = None  # 1 after a flush Redis took, 0 after one it could not


class RouterMetrics:
    def __init__(self, metrics: ProcessMetrics) -> None:
        self.decisions = WriterMetrics(
            dropped=metrics.counter(
                "banditgate_router_decisions_dropped",
                "Decisions dropped unlogged: the in-memory log was full while Redis was away.",
            ),
            flush_failures=metrics.counter(
                "banditgate_router_decision_log_flush_failures",
                "Decision-log writes to Redis that failed (the batch is retried).",
            ),
            pending=metrics.gauge(
                "banditgate_router_decision_log_pending",
                "Decisions waiting for Redis, in memory or spilled (after the last flush attempt).",
            ),
            unencodable=metrics.counter(
                "banditgate_router_decisions_unencodable",
                "Decisions that could not be encoded: that request's log entry is lost (logged).",
            ),
            rejected=metrics.counter(
                "banditgate_router_decisions_rejected",
                "Decisions Redis kept refusing alone (e.g. above proto-max-bulk-len): dropped.",
            ),
            spill_bytes=metrics.gauge(
                "banditgate_router_decision_log_spill_bytes",
                "Bytes of decisions in the local spill file, waiting for Redis.",
            ),
        )
        shadow_dropped = metrics.counter(
            "banditgate_router_shadow_dropped",
            "Shadow mirrors lost: not started (in_flight bound reached) or results dropped "
            "unwritten (buffer full while Redis was away).",
            ["reason"],
        )
        self.mirrors_dropped = shadow_dropped.labels(reason="in_flight")
        self.shadow = WriterMetrics(
            dropped=shadow_dropped.labels(reason="buffer"),
            flush_failures=metrics.counter(
                "banditgate_router_shadow_flush_failures",
                "Shadow-result writes to Redis that failed (the batch is retried).",
            ),
            pending=metrics.gauge(
                "banditgate_router_shadow_pending",
                "Shadow results in memory waiting for Redis (after the last flush attempt).",
            ),
        )
        self.in_flight = metrics.gauge(
            "banditgate_router_in_flight",
            "Routed requests this router is answering now (summed over its workers).",
        )
        self.arm_in_flight = metrics.gauge(
            "banditgate_router_arm_in_flight",
            "Requests this router has sent to an arm and not yet had answered (a model "
            "deployment's load signal).",
            ["experiment", "arm"],
        )
        self.arms_ejected = metrics.gauge(
            "banditgate_router_arms_ejected",
            "Arms this router has ejected (consecutive failures) or is probing.",
        )
        self.arm_ejections = metrics.counter(
            "banditgate_router_arm_ejections",
            "Arms ejected after consecutive failures (each failed probe counts again).",
        )
        self.retries = metrics.counter(
            "banditgate_router_retries",
            "Requests sent to a second arm because the first could not be connected to.",
        )
        self.client_disconnects = metrics.counter(
            "banditgate_router_client_disconnects",
            "Requests whose client went away before the backend answered (call cancelled).",
        )
        self.overloaded = metrics.counter(
            "banditgate_router_overloaded",
            "Requests refused with 503 and Retry-After: the worker's in-flight limit was reached.",
        )
        self.redis_up = metrics.gauge(
            "banditgate_router_redis_up",
            "1 when the router reached Redis at its last check or decision flush, 0 while "
            "degraded (still routing).",
        )
        self.decisions = dataclasses.replace(self.decisions, redis_up=self.redis_up)
        self.swaps = metrics.counter(
            "banditgate_router_policy_swaps",
            "Policies swapped in by this router (a new version or learner loaded).",
        )
