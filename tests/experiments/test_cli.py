from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import orjson
import pytest
import typer
import yaml
from typer.testing import CliRunner, Result

from banditgate.policy import BetaCounts
from banditgate.redis import Redis
from banditgate.registry import PolicyRegistry
from experiments.cli import register
from tests.experiments.conftest import (
    ADMIN_KEY,
    Control,
    decision,
    spec_doc,
    write_decisions,
    write_joined,
)
from tests.support import free_socket


def cli_app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


async def run(control: Control | str, *args: str, key: str | None = ADMIN_KEY) -> Result:
    """The CLI in a worker thread, so the served control plane keeps answering on this loop."""
    url = control if isinstance(control, str) else control.url
    env = {"BANDITGATE_URL": url, "BANDITGATE_ADMIN_KEY": key, "COLUMNS": "220"}
    return await asyncio.to_thread(CliRunner().invoke, cli_app(), list(args), env=env)


def write_spec(path: Path, doc: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


async def test_apply_creates_updates_and_reports_unchanged(
    control: Control, name: str, tmp_path: Path
) -> None:
    doc = spec_doc(name, mode="ab")
    doc["arms"][0]["weight"] = 50
    doc["arms"][1]["weight"] = 50
    path = write_spec(tmp_path / "spec.yaml", doc)

    result = await run(control, "exp", "apply", "-f", str(path))
    assert result.exit_code == 0, result.output
    assert f"experiment/{name} created (version 1)" in result.output
    result = await run(control, "exp", "apply", "-f", str(path))
    assert f"experiment/{name} unchanged (version 1)" in result.output

    doc["arms"][0]["weight"] = 40
    doc["arms"][1]["weight"] = 60
    write_spec(path, doc)
    result = await run(control, "exp", "apply", "-f", str(path))
    assert result.exit_code == 0, result.output
    assert f"experiment/{name} configured (version 2)" in result.output
    assert "replace arms[a].weight" in result.output
    described = await control.get(f"/v1/experiments/{name}")
    assert [a["weight"] for a in described["spec"]["arms"]] == [40, 60]


async def test_apply_rejects_a_bad_spec_with_its_field(
    control: Control, name: str, tmp_path: Path
) -> None:
    doc = spec_doc(name)
    doc["arms"][1]["url"] = "ftp://nope"
    result = await run(control, "exp", "apply", "-f", str(write_spec(tmp_path / "bad.yaml", doc)))
    assert result.exit_code == 2
    assert "arms[1].url" in result.output
    status, _ = await control.call("GET", f"/v1/experiments/{name}")
    assert status == 404


async def test_changes_need_the_admin_key(control: Control, name: str, tmp_path: Path) -> None:
    path = write_spec(tmp_path / "spec.yaml", spec_doc(name))
    result = await run(control, "exp", "apply", "-f", str(path), key=None)
    assert result.exit_code == 1
    assert "HTTP 401" in result.output
    result = await run(control, "exp", "apply", "-f", str(path), key="wrong")
    assert result.exit_code == 1
    assert "HTTP 403" in result.output


async def test_list_and_show(control: Control, name: str) -> None:
    await control.call("POST", "/v1/experiments", spec_doc(name, description="reviews"))
    await control.call("PATCH", f"/v1/experiments/{name}", {"policy": {"min_arm_share": 0.1}})
    result = await run(control, "exp", "list")
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if name in line)
    assert "bandit" in line and "running" in line and "a, b" in line

    result = await run(control, "exp", "show", name)
    assert result.exit_code == 0, result.output
    assert "spec version 2" in result.output
    assert "min_arm_share: 0.1" in result.output
    assert "replace policy.min_arm_share" in result.output

    result = await run(control, "exp", "show", name, "--json")
    assert orjson.loads(result.output)["spec"]["description"] == "reviews"


async def test_stats_tables_and_json(control: Control, name: str, redis: Redis) -> None:
    await control.call("POST", "/v1/experiments", spec_doc(name, mode="ab"))
    rows = [
        decision(name, arm, [0.5, 0.5], mode="ab", event_id=str(i))
        for i, arm in enumerate("aaabbb")
    ]
    await write_decisions(redis, name, rows)
    for d, reward in zip(rows, [1, 1, 0, 0, 0, 1], strict=True):
        await write_joined(redis, name, d, float(reward), rewarded=bool(reward))
    result = await run(control, "exp", "stats", name)
    assert result.exit_code == 0, result.output
    row_a = next(line for line in result.output.splitlines() if line.startswith("│ a "))
    assert "50.0%" in row_a  # traffic share
    assert "0.6667" in row_a  # mean reward, 2 of 3
    assert "sample ratio: ok (configured_weights" in result.output
    assert "b vs a" in result.output  # the sequential comparison
    assert "rewards: 0 received, 0 late, 0 orphaned, 0 duplicate" in result.output

    result = await run(control, "exp", "stats", name, "--json", "--window", "15m")
    data = orjson.loads(result.output)
    assert data["window"]["seconds"] == 900
    assert data["totals"]["decisions"] == 6
    result = await run(control, "exp", "stats", name, "--window", "soon")
    assert result.exit_code == 2


async def test_pause_end_resume(control: Control, name: str) -> None:
    await control.call("POST", "/v1/experiments", spec_doc(name, mode="ab"))
    result = await run(control, "exp", "pause", name, "a=3", "b=1")
    assert result.exit_code == 0, result.output
    assert f"{name}: paused at a=3, b=1" in result.output
    assert (await control.get(f"/v1/experiments/{name}"))["status"] == "paused"

    result = await run(control, "exp", "end", name, "--winner", "b")
    assert result.exit_code == 0, result.output
    described = await control.get(f"/v1/experiments/{name}")
    assert described["status"] == "ended"
    assert described["override"]["weights"] == {"a": 0.0, "b": 1.0}

    result = await run(control, "exp", "resume", name)
    assert result.exit_code == 0, result.output
    assert (await control.get(f"/v1/experiments/{name}"))["status"] == "running"
    result = await run(control, "exp", "resume", name)
    assert result.exit_code == 1
    assert "neither paused nor ended" in result.output

    result = await run(control, "exp", "pause", name, "a")
    assert result.exit_code == 2
    assert "arm=weight" in result.output


async def test_rollback_serves_the_previous_policy(
    control: Control, name: str, redis: Redis
) -> None:
    await control.call("POST", "/v1/experiments", spec_doc(name, policy={"learner": "thompson"}))
    registry = PolicyRegistry(redis)
    for _ in range(3):
        await registry.publish(name, BetaCounts().to_bytes(), learner="thompson", source="trainer")
    result = await run(control, "exp", "rollback", name)
    assert result.exit_code == 0, result.output
    assert "now serving policy version 2" in result.output
    assert await registry.current_version(name) == 2
    result = await run(control, "exp", "rollback", name, "--to", "3")
    assert result.exit_code == 0, result.output
    assert await registry.current_version(name) == 3
    result = await run(control, "exp", "rollback", name, "--to", "7")
    assert result.exit_code == 1
    assert "no policy version 7" in result.output


async def test_delete(control: Control, name: str) -> None:
    await control.call("POST", "/v1/experiments", spec_doc(name))
    result = await run(control, "exp", "delete", name, "--yes")
    assert result.exit_code == 0, result.output
    status, _ = await control.call("GET", f"/v1/experiments/{name}")
    assert status == 404


@pytest.mark.parametrize("command", [["show"], ["stats"], ["pause"], ["end", "--winner", "a"]])
async def test_unknown_experiment(control: Control, name: str, command: list[str]) -> None:
    result = await run(control, "exp", command[0], name, *command[1:])
    assert result.exit_code == 1
    assert f"no experiment named '{name}'" in result.output
    assert "HTTP 404" in result.output


async def test_unreachable_control_plane() -> None:
    sock = free_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()  # nothing listens there now
    result = await run(url, "exp", "list")
    assert result.exit_code == 1
    assert "cannot reach the control plane" in result.output


async def run_at(control: Control, columns: int, *args: str) -> Result:
    env = {"BANDITGATE_URL": control.url, "BANDITGATE_ADMIN_KEYS": ADMIN_KEY}
    env["COLUMNS"] = str(columns)
    return await asyncio.to_thread(CliRunner().invoke, cli_app(), list(args), env=env)


async def test_list_stats_and_show_fit_80_columns(control: Control, redis: Redis) -> None:
    name = f"reviews-with-a-long-name-{uuid.uuid4().hex}"  # 57 characters
    doc = spec_doc(name, ("bert-base-uncased-1", "bert-large-2"), mode="ab")
    await control.call("POST", "/v1/experiments", doc)
    await control.call("PATCH", f"/v1/experiments/{name}", {"description": "two classifiers"})
    arms = ("bert-base-uncased-1", "bert-large-2")
    rows = [
        decision(name, arm, [0.5, 0.5], arms=arms, mode="ab", event_id=str(i))
        for i, arm in enumerate(["bert-base-uncased-1"] * 3 + ["bert-large-2"] * 3)
    ]
    await write_decisions(redis, name, rows)
    for d, reward in zip(rows, [1, 1, 0, 0, 0, 1], strict=True):
        await write_joined(redis, name, d, float(reward), rewarded=bool(reward))

    for command in (["list"], ["stats", name], ["show", name]):
        result = await run_at(control, 80, "exp", *command)
        assert result.exit_code == 0, result.output
        too_long = [line for line in result.output.splitlines() if len(line) > 80]
        assert too_long == [], command
        assert "…" not in result.output, command  # nothing cut short

    listed = (await run_at(control, 80, "exp", "list")).output.splitlines()
    assert f"name: {name}" in listed
    details = listed[listed.index(f"name: {name}") + 1 :]
    assert "mode: ab" in details[0] and "arms: bert-base-uncased-1, bert-large-2" in "".join(
        details[:3]
    )

    stats = (await run_at(control, 80, "exp", "stats", name)).output
    block = stats.split("arm: bert-base-uncased-1", 1)[1].split("arm: bert-large-2", 1)[0]
    assert "share: 50.0%" in block and "mean reward: 0.6667" in block
    assert "sample ratio: ok (configured_weights" in stats

    wide = (await run_at(control, 80, "exp", "stats", name, "--wide")).output
    row = next(line for line in wide.splitlines() if line.startswith("│ bert-base-uncased-1 "))
    assert "50.0%" in row and "0.6667" in row and len(row) > 80


async def test_the_admin_key_comes_from_the_servers_variable(
    control: Control, name: str, tmp_path: Path
) -> None:
    path = write_spec(tmp_path / "spec.yaml", spec_doc(name))
    env = {"BANDITGATE_URL": control.url, "BANDITGATE_ADMIN_KEYS": f"{ADMIN_KEY},another-key"}
    result = await asyncio.to_thread(
        CliRunner().invoke, cli_app(), ["exp", "apply", "-f", str(path)], env=env
    )
    assert result.exit_code == 0, result.output
    assert f"experiment/{name} created (version 1)" in result.output
