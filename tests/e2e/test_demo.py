"""A small demo, end to end, as `make demo` runs it (fewer requests)."""

from __future__ import annotations

import orjson
from typer.testing import CliRunner

from banditgate_app.cli import app

runner = CliRunner()


def test_small_demo_runs_the_whole_loop_and_reports(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(
        app,
        [
            "demo",
            "--requests",
            "1200",
            "--scenario",
            "contextual",
            "--seed",
            "3",
            "--json",
            "out/demo.json",
            "--report",
            "out/demo.html",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = orjson.loads((tmp_path / "out" / "demo.json").read_bytes())
    assert summary["requests"] == 1200
    for key in ("avg_reward", "ab_reward", "best_arm_reward", "oracle_reward"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["oracle_reward"] >= summary["best_arm_reward"] >= summary["ab_reward"] - 0.05
    assert set(summary["arms"]) == {"bert-1", "bert-2"}
    assert abs(sum(arm["share"] for arm in summary["arms"].values()) - 1.0) < 1e-9
    assert summary["detail"]["joined"] == 1200  # every reward reached the joiner
    assert summary["policy_versions"] >= 1, "the trainer never published"
    assert summary["reward_to_policy_s"] is not None and summary["reward_to_policy_s"] < 10
    page = (tmp_path / "out" / "demo.html").read_text()
    assert "uPlot" in page and '"rolling_reward"' in page and "<script src=" not in page
    assert '"cumulative"' in page and "Cumulative regret against the per-context oracle" in page
    assert "Average reward on the same traffic" in result.output
