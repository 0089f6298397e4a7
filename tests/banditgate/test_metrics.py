"""Process metrics: one process's own, and several workers' added up through a shared directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from banditgate.metrics import MULTIPROCESS_DIR_VARIABLE, ProcessMetrics
from tests.router.test_metrics import metric_values

ROOT = Path(__file__).resolve().parents[2]

# A worker process: counts, sets its queue gauge, and stops (cleanly or not).
WORKER = """
import sys
from banditgate.metrics import ProcessMetrics
from router.metrics import RouterMetrics

metrics = ProcessMetrics()
router = RouterMetrics(metrics)
router.swaps.inc(int(sys.argv[1]))
router.decisions.dropped.inc(int(sys.argv[2]))
router.decisions.pending.set(float(sys.argv[3]))
if sys.argv[4] == "stopped":
    metrics.close()
"""


def test_one_process_reports_its_own_values() -> None:
    from router.metrics import RouterMetrics

    metrics = ProcessMetrics()
    router = RouterMetrics(metrics)
    router.swaps.inc()
    router.mirrors_dropped.inc(2)
    router.decisions.pending.set(7)
    text = metrics.render()
    assert metric_values(text, "banditgate_router_policy_swaps") == {(): 1.0}
    assert metric_values(text, "banditgate_router_decision_log_pending") == {(): 7.0}
    assert metric_values(text, "banditgate_router_shadow_dropped") == {
        (("reason", "in_flight"),): 2.0,
        (("reason", "buffer"),): 0.0,
    }
    other = ProcessMetrics()  # another app in this process counts apart
    RouterMetrics(other)
    assert metric_values(other.render(), "banditgate_router_policy_swaps") == {(): 0.0}


def test_workers_add_up_through_the_multiprocess_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"PYTHONPATH": str(ROOT), MULTIPROCESS_DIR_VARIABLE: str(tmp_path)}
    for args in (("2", "1", "4", "stopped"), ("3", "5", "6", "running")):
        subprocess.run(
            [sys.executable, "-c", WORKER, *args], env=env, cwd=ROOT, check=True, timeout=60
        )
    monkeypatch.setenv(MULTIPROCESS_DIR_VARIABLE, str(tmp_path))
    text = ProcessMetrics().render()
    # Counters: every worker that ran. Gauges: the ones still running.
    assert metric_values(text, "banditgate_router_policy_swaps") == {(): 5.0}
    assert metric_values(text, "banditgate_router_decisions_dropped") == {(): 6.0}
    assert metric_values(text, "banditgate_router_decision_log_pending") == {(): 6.0}
