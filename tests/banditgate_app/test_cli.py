"""What the top-level commands print."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from banditgate_app.cli import app


def test_validation_messages_keep_their_brackets(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("name: Reviews\narms:\n  - {name: bert-1, url: 'http://127.0.0.1:1'}\n")
    result = CliRunner().invoke(app, ["validate", "-f", str(path)], env={"COLUMNS": "80"})
    assert result.exit_code == 2
    assert "name: String should match pattern '^[a-z0-9][a-z0-9-]{0,62}$'" in result.output
