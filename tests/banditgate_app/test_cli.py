"""Commands that read or change server state go through the control plane's API."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from banditgate_app.cli import app
from tests.support import free_socket

STATE_COMMANDS = [
    ["policy", "list", "-e", "reviews"],
    ["policy", "activate", "1", "-e", "reviews"],
    ["policy", "publish", "model.vw", "-e", "reviews"],
    ["export", "flush"],
    ["train", "--from", "export/", "-e", "reviews"],
    ["exp", "list"],
]


@pytest.mark.parametrize("command", STATE_COMMANDS, ids=" ".join)
def test_state_commands_call_the_api_and_never_open_an_embedded_redis(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock = free_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()  # nothing listens there now
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.vw").write_bytes(b"model")
    env = {"BANDITGATE_URL": url, "BANDITGATE_REDIS_URL": None, "COLUMNS": "80"}
    result = CliRunner().invoke(app, command, env=env)
    assert result.exit_code == 1, result.output
    assert f"cannot reach the control plane at {url}" in result.output
    assert sorted(os.listdir(tmp_path)) == ["model.vw"]  # no ./.banditgate with an empty Redis


def test_validation_messages_keep_their_brackets(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("name: Reviews\narms:\n  - {name: bert-1, url: 'http://127.0.0.1:1'}\n")
    result = CliRunner().invoke(app, ["validate", "-f", str(path)], env={"COLUMNS": "80"})
    assert result.exit_code == 2
    assert "name: String should match pattern '^[a-z0-9][a-z0-9-]{0,62}$'" in result.output


def test_admin_key_help_names_the_servers_variable() -> None:
    result = CliRunner().invoke(app, ["policy", "publish", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "BANDITGATE_ADMIN_KEYS" in result.output and "BANDITGATE_URL" in result.output
