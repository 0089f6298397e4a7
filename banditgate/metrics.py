"""This process's own metrics, served on /metrics beside the ones derived from Redis.

Most of /metrics is computed from Redis at scrape time (experiments/metrics.py), the same
whichever process answers. What never reaches Redis, such as a router's in-memory losses
while Redis is away, is counted in the process: a component creates its metrics in the
`ProcessMetrics` it is given, and whoever serves /metrics appends `render()`.

Several worker processes on one port (`--workers N`): a scrape reaches one of them. With
PROMETHEUS_MULTIPROC_DIR set (`run_uvicorn` sets it to a fresh directory when workers > 1)
each process writes its values to files there and any process renders the aggregate:
counters are summed over every process that ran since the directory was created (a dead
worker's counts stay), gauges are summed over the processes still running. Without it,
each process reports its own values.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROCESS_DIR_VARIABLE) or None


class ProcessMetrics:
    """One registry per process (an app factory makes it, the components add to it)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        """A counter, exposed as `{name}_total`."""
        return Counter(name, documentation, labels, registry=self.registry)

    def gauge(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
        """A gauge; across worker processes, the sum over the live ones."""
        return Gauge(
            name, documentation, labels, registry=self.registry, multiprocess_mode="livesum"
        )

    def render(self) -> bytes:
        """Prometheus text: this process's values, or every worker's when multiprocess."""
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry)
        aggregate = CollectorRegistry()
        MultiProcessCollector(aggregate, path=path)
        return generate_latest(aggregate)

    def close(self) -> None:
        """A stopping process: its gauges leave the aggregate (its counters stay in it)."""
        path = multiprocess_dir()
        if path is not None:
            mark_process_dead(os.getpid(), path)
