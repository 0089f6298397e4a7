"""The router's own counters (`banditgate_router_*`): what it lost or changed in memory.

Incremented where the event happens: drops, failed flushes and policy swaps are rare, the
queue gauges are set once per flush attempt, and the one per-request value, the requests
in flight, is a gauge without labels (an autoscaler's signal: it sums over the pods). Exposed by the
process's /metrics (see banditgate/metrics.py for several workers).
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from banditgate.metrics import ProcessMetrics


@dataclass(frozen=True)
class WriterMetrics:
    """What a batched stream writer reports."""

    dropped: Counter
    flush_failures: Counter
    pending: Gauge


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
                "Decisions in memory waiting for Redis (after the last flush attempt).",
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
            "Data-plane requests this router is answering now (summed over its workers).",
        )
        self.swaps = metrics.counter(
            "banditgate_router_policy_swaps",
            "Policies swapped in by this router (a new version or learner loaded).",
        )
