from __future__ import annotations

import asyncio
import random
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from banditgate.featurize import action_namespace, namespaces
from banditgate.policy import ActionSet, build_policy
from banditgate.registry import PolicyRegistry
from banditgate.spec import parse_spec
from banditgate.store import ExperimentStore
from banditgate_app.cli import app
from tests.support import ADMIN_KEY, Control

runner = CliRunner()


def spec_for(name: str, learner: str = "vw"):  # type: ignore[no-untyped-def]
    return parse_spec(
        {
            "name": name,
            "arms": [
                {"name": "a", "url": "http://127.0.0.1:1"},
                {"name": "b", "url": "http://127.0.0.1:2"},
            ],
            "policy": {"learner": learner},
        }
    )


def logged_rows(n: int, seed: int = 0) -> list[dict]:  # type: ignore[type-arg]
    """An A/B test's log (50/50): arm b is right 80% of the time on long reviews, a on short ones."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        kind = rng.choice(["5", "100"])
        chosen = rng.choice(["a", "b"])
        good = (chosen == "a") == (kind == "5")
        reward = 1.0 if rng.random() < (0.8 if good else 0.2) else 0.0
        rows.append(
            {
                "event_id": f"e{i}",
                "arms": ["a", "b"],
                "pmf": [0.5, 0.5],
                "chosen": chosen,
                "chosen_prob": 0.5,
                "context": orjson.dumps({"t.len": kind}).decode(),
                "reward": reward,
                "rewarded": True,
                "ts_ms": 1_700_000_000_000 + i,
            }
        )
    return rows


async def invoke(control: Control | None, *args: str):  # type: ignore[no-untyped-def]
    """The CLI in a thread, so the control plane it calls keeps answering on this loop."""
    env = {
        "BANDITGATE_URL": control.url if control else None,
        "BANDITGATE_ADMIN_KEYS": ADMIN_KEY,
        "COLUMNS": "80",
    }
    return await asyncio.to_thread(runner.invoke, app, list(args), env=env)


@pytest.mark.parametrize("learner", ["vw", "auto"])
async def test_warm_start_from_parquet_learns_the_contextual_policy(
    redis, control, name, tmp_path, learner
):
    spec = spec_for(name, learner)
    await ExperimentStore(redis).put(spec)
    path = tmp_path / "export" / "date=2026-11-26" / "hour=03" / "part-0.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(logged_rows(3000)), path)
    result = await invoke(
        control, "train", "--from", str(tmp_path / "export"), "--experiment", name
    )
    assert result.exit_code == 0, result.output
    assert "warm start from 3000 logged decisions" in result.output
    registry = PolicyRegistry(redis)
    (version,) = await registry.versions(name)
    assert version.source == "warmstart" and version.n_examples == 3000
    assert version.learner == "vw"  # under auto, its vw candidate learns from the logs
    assert version.ope["candidate"]["dr"]["value"] > version.ope["logging_policy"]["dr"]["value"]
    policy = build_policy(spec, await registry.model(name, version.version), version.version)
    actions = ActionSet.from_spec(spec)
    assert policy.probabilities({"t.len": "5"}, actions)[0] > 0.9
    assert policy.probabilities({"t.len": "100"}, actions)[1] > 0.9


async def test_warm_start_from_dsjson(redis, control, name, tmp_path):
    spec = spec_for(name)
    await ExperimentStore(redis).put(spec)
    lines = []
    for row in logged_rows(2000, seed=1):
        index = ["a", "b"].index(row["chosen"])
        context = orjson.loads(row["context"])
        lines.append(
            orjson.dumps(
                {
                    "_label_cost": -row["reward"],
                    "_label_probability": 0.5,
                    "_label_Action": index + 1,
                    "_labelIndex": index,
                    "a": [index + 1, 2 - index],
                    "p": [0.5, 0.5],
                    "c": {
                        **namespaces(context),
                        "_multi": [{"a": action_namespace(n)} for n in ("a", "b")],
                    },
                    "EventId": row["event_id"],
                    "Timestamp": "2026-11-26T03:00:00.000Z",
                    "VWState": {"m": "v0"},
                    "o": [],
                }
            ).decode()
        )
    (tmp_path / "log.json").write_text("\n".join(lines) + "\n")
    result = await invoke(
        control, "train", "--from", str(tmp_path / "log.json"), "--experiment", name
    )
    assert result.exit_code == 0, result.output
    registry = PolicyRegistry(redis)
    (version,) = await registry.versions(name)
    policy = build_policy(spec, await registry.model(name, version.version), version.version)
    actions = ActionSet.from_spec(spec)
    assert policy.probabilities({"t.len": "5"}, actions)[0] > 0.9
    assert policy.probabilities({"t.len": "100"}, actions)[1] > 0.9


async def test_bad_warm_start_files_are_refused_with_the_row_and_reason(
    redis, control, name, tmp_path
):
    await ExperimentStore(redis).put(spec_for(name))
    rows = logged_rows(10)
    missing = tmp_path / "missing.parquet"
    pq.write_table(
        pa.Table.from_pylist([{k: v for k, v in r.items() if k != "pmf"} for r in rows]), missing
    )
    result = await invoke(control, "train", "--from", str(missing), "--experiment", name)
    assert result.exit_code != 0 and "missing columns ['pmf']" in result.output

    rows[7]["pmf"] = [0.0, 1.0]
    rows[7]["chosen"] = "a"
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist(rows), bad)
    result = await invoke(control, "train", "--from", str(bad), "--experiment", name)
    assert result.exit_code != 0
    assert "row 7" in result.output and "outside (0, 1]" in result.output

    (tmp_path / "bad.json").write_text(
        '{"_label_cost": 0, "_label_probability": 1.5, "_labelIndex": 0, "p": [1], "c": {"_multi": [{}]}}\n'
    )
    result = await invoke(
        control, "train", "--from", str(tmp_path / "bad.json"), "--experiment", name
    )
    assert (
        result.exit_code != 0
        and "bad.json line 1" in result.output
        and "_label_probability" in result.output
    )
    assert await PolicyRegistry(redis).versions(name) == []


async def test_policy_publish_cli_refuses_incompatible_models(redis, control, name, tmp_path: Path):
    await ExperimentStore(redis).put(spec_for(name))
    garbage = tmp_path / "garbage.vw"
    garbage.write_bytes(b"\x00\x01not a model")
    result = await invoke(control, "policy", "publish", str(garbage), "--experiment", name)
    assert result.exit_code != 0 and "not a loadable VW model" in result.output
    result = await invoke(
        control, "policy", "publish", str(garbage), "--experiment", "no-such-experiment"
    )
    assert result.exit_code != 0 and "no experiment named" in result.output
    assert await PolicyRegistry(redis).versions(name) == []


async def test_policy_cli_publishes_lists_and_rolls_back(redis, control, name, tmp_path: Path):
    from trainer.learner import VWLearner

    spec = spec_for(name)
    await ExperimentStore(redis).put(spec)
    model = tmp_path / "model.vw"
    model.write_bytes(VWLearner(spec.policy).model_bytes())
    for _ in range(2):
        result = await invoke(control, "policy", "publish", str(model), "--experiment", name)
        assert result.exit_code == 0, result.output
    registry = PolicyRegistry(redis)
    assert await registry.current_version(name) == 2
    listed = await invoke(control, "policy", "list", "--experiment", name)
    assert listed.exit_code == 0 and "current" in listed.output
    assert max(len(line) for line in listed.output.splitlines()) <= 80
    rolled = await invoke(control, "policy", "activate", "1", "--experiment", name)
    assert rolled.exit_code == 0, rolled.output
    assert await registry.current_version(name) == 1
    missing = await invoke(control, "policy", "activate", "9", "--experiment", name)
    assert missing.exit_code != 0 and "no policy version 9" in missing.output


async def test_a_bad_spec_fails_the_cli_with_the_field_path(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: reviews\narms:\n  - {name: a, url: 'ftp://nope'}\n")
    for command in (["validate", "-f", str(bad)], ["serve", "-f", str(bad)]):
        result = await invoke(None, *command)
        assert result.exit_code == 2, result.output
        assert "arms[0].url" in result.output and "http://" in result.output
