"""The deployment files users run: they parse, and the commands they run exist and accept their arguments."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml
from typer.testing import CliRunner

from banditgate.spec import load_specs
from banditgate_app.cli import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def accepts(argv: list[str]) -> None:
    """The CLI parses these arguments (checked with --help appended: nothing is started)."""
    result = runner.invoke(app, [*argv, "--help"])
    assert result.exit_code == 0, (argv, result.output)


def test_compose_file_parses_and_its_commands_are_real() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "banditgate", "router", "ingest", "workers", "control"} <= set(services)
    for name, service in services.items():
        if name == "redis":
            assert service["healthcheck"]["test"][-1] == "ping"
            continue
        assert service["build"] == "."
        assert service["environment"]["BANDITGATE_REDIS_URL"] == "redis://redis:6379/0"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        command = service["command"]
        accepts(command)
        if "-f" in command:
            spec_path = command[command.index("-f") + 1]
            mount = next(v for v in service["volumes"] if v.endswith(":/specs:ro"))
            local = ROOT / mount.split(":")[0] / Path(spec_path).name
            assert load_specs(local)
    workers = services["workers"]["command"]
    assert workers[workers.index("--only") + 1] == "trainer,controller"


def test_dockerfile_copies_what_exists_and_runs_a_real_command() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    copies = [shlex.split(line)[1:-1] for line in lines if line.startswith("COPY ")]
    for sources in copies:
        for source in sources:
            assert (ROOT / source).exists(), source
    entrypoint = next(line for line in lines if line.startswith("ENTRYPOINT"))
    cmd = next(line for line in lines if line.startswith("CMD ["))
    assert yaml.safe_load(entrypoint.split(" ", 1)[1]) == ["banditgate"]
    argv = yaml.safe_load(cmd.split(" ", 1)[1])
    accepts(argv)
    assert load_specs(ROOT / "examples" / Path(argv[argv.index("-f") + 1]).name)
    packages = {"banditgate", "router", "reward_ingest", "trainer", "experiments"}
    assert packages <= {sources[0] for sources in copies}
