"""The whole loop as separate processes on the cluster: `banditgate demo` runs `banditgate
serve` (router, webhook, control plane, and its workers child: joiner, trainer, exporter)
against the cluster URL, sends traffic and rewards, and checks that the trainer published
and the router swapped (`policy_versions`, `reward_to_policy_s`)."""

from __future__ import annotations

import pytest

from tests.e2e.test_demo import test_small_demo_runs_the_whole_loop_and_reports as demo_test


def test_the_demo_runs_the_whole_loop_on_the_cluster(
    redis_url: str, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BANDITGATE_REDIS_URL", redis_url)
    demo_test(tmp_path, monkeypatch)
