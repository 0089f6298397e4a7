"""The deployment files users run: they parse, and the commands, ports and files they name exist.

Docker cannot run containers here, so this checks what can be checked without it
(and `docker compose config`, or docker-compose's, when a client is installed).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer.main
import yaml
from typer.testing import CliRunner

from banditgate.spec import load_specs
from banditgate_app import healthcheck
from banditgate_app.cli import app
from banditgate_app.workers import WORKERS

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILES = ("docker-compose.yml", "docker-compose.split.yml")
runner = CliRunner()


def accepts(argv: list[str]) -> None:
    """The CLI parses these arguments (checked with --help appended: nothing is started)."""
    result = runner.invoke(app, [*argv, "--help"])
    assert result.exit_code == 0, (argv, result.output)


def compose(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / name).read_text())
    return data


def banditgate_services(name: str) -> dict[str, dict[str, Any]]:
    return {key: s for key, s in compose(name)["services"].items() if s.get("build") == "."}


def option(command: list[str], name: str, default: str | None = None) -> str | None:
    return command[command.index(name) + 1] if name in command else default


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_services_run_real_commands_on_redis_with_restart_policies(name: str) -> None:
    services = compose(name)["services"]
    assert services["redis"]["healthcheck"]["test"][-1] == "ping"
    assert services["redis"]["restart"] == "unless-stopped"
    for key, service in banditgate_services(name).items():
        assert service["restart"] == "unless-stopped", key
        assert service["init"] is True, key
        command = service["command"]
        accepts(command)
        if command[0] == "backends":
            assert not service.get("depends_on"), "the backends need nothing"
            continue
        assert service["environment"]["BANDITGATE_REDIS_URL"] == "redis://redis:6379/0", key
        assert service["depends_on"]["redis"]["condition"] == "service_healthy", key
        # The health check probes the port the command listens on inside the container.
        probe = healthcheck.probe_for(command)
        if command[0] in ("serve", "router", "ingest", "control"):
            target = int(service["ports"][0].split(":")[1])
            assert probe.urls == (f"http://127.0.0.1:{target}/health/ready",), key


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_specs_point_at_the_backends_service(name: str) -> None:
    services = compose(name)["services"]
    backends = services["backends"]["command"]
    ports = {int(port) for port in (option(backends, "--ports") or "").split(",")}
    assert ports == {9101, 9102}
    assert option(backends, "--host") == "0.0.0.0"
    applying = [s for s in banditgate_services(name).values() if "-f" in s["command"]]
    assert len(applying) == 1, "one service applies the spec"
    service = applying[0]
    mount = next(v for v in service["volumes"] if v.endswith(":/specs:ro"))
    spec_path = ROOT / mount.split(":")[0] / Path(option(service["command"], "-f") or "").name
    for spec in load_specs(spec_path):
        for arm in spec.arms:
            url = urlsplit(arm.url)
            assert url.hostname == "backends", "not the container's own 127.0.0.1"
            assert url.port in ports
    if "backends" in service.get("depends_on", {}):
        assert service["depends_on"]["backends"]["condition"] == "service_healthy"


def test_all_in_one_and_split_are_separate_files() -> None:
    single = [s["command"][0] for s in banditgate_services("docker-compose.yml").values()]
    split = [s["command"][0] for s in banditgate_services("docker-compose.split.yml").values()]
    assert sorted(single) == ["backends", "serve"]
    assert sorted(split) == ["backends", "control", "ingest", "router", "workers"]
    for name in COMPOSE_FILES:
        assert all("profiles" not in s for s in compose(name)["services"].values())
    workers = banditgate_services("docker-compose.split.yml")["workers"]["command"]
    # `ingest` is the webhook only: the split setup runs every worker, the joiner included.
    assert option(workers, "--only") is None and set(WORKERS) == {
        "joiner",
        "exporter",
        "trainer",
        "controller",
        "monitor",
    }


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_control_plane_needs_admin_keys(name: str) -> None:
    services = banditgate_services(name)
    for service in services.values():
        if service["command"][0] in ("serve", "control"):
            assert service["environment"]["BANDITGATE_ADMIN_KEYS"].startswith(
                "${BANDITGATE_ADMIN_KEYS:?"
            )


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_config_when_a_client_is_installed(name: str) -> None:
    if shutil.which("docker-compose"):
        argv = ["docker-compose", "-f", name, "config", "--quiet"]
    elif (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        argv = ["docker", "compose", "-f", name, "config", "--quiet"]
    else:
        pytest.skip("no docker compose client")
    env = {**os.environ, "BANDITGATE_ADMIN_KEYS": "k"}
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    env.pop("BANDITGATE_ADMIN_KEYS")
    refused = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, timeout=60)
    assert refused.returncode != 0
    assert b"set BANDITGATE_ADMIN_KEYS" in refused.stderr


def test_dockerfile_copies_what_exists_installs_pinned_and_runs_a_real_command() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    copies = [shlex.split(line)[1:-1] for line in lines if line.startswith("COPY ")]
    for sources in copies:
        for source in sources:
            assert (ROOT / source).exists(), source
    packages = {"banditgate", "banditgate_app", "router", "reward_ingest", "trainer", "experiments"}
    assert packages <= {sources[0] for sources in copies}
    assert ["constraints.txt"] in copies
    install = next(line for line in lines if line.startswith("RUN pip install"))
    assert "-c constraints.txt" in install
    entrypoint = next(line for line in lines if line.startswith("ENTRYPOINT"))
    cmd = [line for line in lines if line.startswith("CMD [")][-1]
    assert yaml.safe_load(entrypoint.split(" ", 1)[1]) == ["banditgate"]
    argv = yaml.safe_load(cmd.split(" ", 1)[1])
    accepts(argv)
    assert load_specs(ROOT / "examples" / Path(argv[argv.index("-f") + 1]).name)
    health = next(i for i, line in enumerate(lines) if line.startswith("HEALTHCHECK"))
    probe = lines[health + 1]
    assert lines[health].endswith("\\") and probe.startswith("CMD [")
    assert yaml.safe_load(probe.split(" ", 1)[1]) == ["python", "-m", "banditgate_app.healthcheck"]


def test_health_probe_knows_each_commands_default_port() -> None:
    group = typer.main.get_command(app)
    for command, port in healthcheck.DEFAULT_PORTS.items():
        params = {p.name: p for p in group.commands[command].params}  # type: ignore[attr-defined]
        assert params["port"].default == port, command
    backends = {p.name: p for p in group.commands["backends"].params}  # type: ignore[attr-defined]
    assert backends["ports"].default == healthcheck.BACKEND_PORTS
