"""The container health check probes whatever command the container runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from banditgate_app.healthcheck import Probe, banditgate_args, main, probe_for
from tests.support import free_socket

ROOT = Path(__file__).resolve().parents[2]


def _port() -> int:
    sock = free_socket()
    port = int(sock.getsockname()[1])
    sock.close()
    return port


@pytest.mark.parametrize(
    ("cmdline", "args"),
    [
        (["/usr/local/bin/python3.11", "/usr/local/bin/banditgate", "serve"], ["serve"]),
        (
            ["/sbin/docker-init", "--", "banditgate", "ingest", "--port", "8080"],
            ["ingest", "--port", "8080"],
        ),
        (["python", "-m", "banditgate_app.cli", "workers"], ["workers"]),
        (["redis-server"], []),
    ],
)
def test_finds_the_banditgate_arguments_of_the_container_command(
    cmdline: list[str], args: list[str]
) -> None:
    assert banditgate_args(cmdline) == args


@pytest.mark.parametrize(
    ("args", "probe"),
    [
        (["serve", "-f", "/specs/x.yaml"], Probe("http", ("http://127.0.0.1:8080/health/ready",))),
        (
            ["router", "--host", "0.0.0.0", "--port", "9000", "--workers", "2"],
            Probe("http", ("http://127.0.0.1:9000/health/ready",)),
        ),
        (["ingest", "--port=7000"], Probe("http", ("http://127.0.0.1:7000/health/ready",))),
        (["control", "--host", "10.1.2.3"], Probe("http", ("http://10.1.2.3:8082/health/ready",))),
        (["control", "--host", "::1"], Probe("http", ("http://[::1]:8082/health/ready",))),
        (
            ["backends", "--host", "0.0.0.0"],
            Probe("http", ("http://127.0.0.1:9101/ping", "http://127.0.0.1:9102/ping")),
        ),
        (["workers"], Probe("workers", check=("workers", "--check"))),
        (
            ["workers", "--only", "trainer,controller"],
            Probe("workers", check=("workers", "--check", "--only", "trainer,controller")),
        ),
        (["trainer"], Probe("workers", check=("workers", "--check", "--only", "trainer"))),
        (["exp", "list"], Probe("none")),
        ([], Probe("none")),
    ],
)
def test_probe_for_each_command(args: list[str], probe: Probe) -> None:
    assert probe_for(args) == probe


def _start(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "banditgate_app.cli", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_until(check: list[str], process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    """Poll the health check as Docker does."""
    deadline = time.monotonic() + timeout_s
    while main(check) != 0:
        assert process.poll() is None, "the command exited"
        assert time.monotonic() < deadline, "never healthy"
        time.sleep(0.2)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


@pytest.mark.parametrize("command", ["ingest", "control"])
def test_http_commands_become_healthy_and_unhealthy_once_stopped(
    command: str, redis_url: str, tmp_path: Path
) -> None:
    port = str(_port())
    env = {**os.environ, "BANDITGATE_REDIS_URL": redis_url, "BANDITGATE_DATA_DIR": str(tmp_path)}
    env["BANDITGATE_ADMIN_KEYS"] = "test-admin-key"  # required on a non-loopback interface
    argv = ["banditgate", command, "--host", "0.0.0.0", "--port", port]
    assert main(argv) == 1  # nothing listens yet
    process = _start(env, *argv[1:])
    try:
        _wait_until(argv, process)
    finally:
        _stop(process)
    assert main(argv) == 1


def test_workers_are_healthy_while_their_heartbeats_are_fresh(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BANDITGATE_REDIS_URL", redis_url)
    env = {**os.environ, "BANDITGATE_DATA_DIR": str(tmp_path), "BANDITGATE_EXPERIMENTS": "none"}
    argv = ["banditgate", "workers", "--only", "joiner,trainer"]
    process = _start(env, *argv[1:])
    try:
        _wait_until(argv, process)
        assert main(["banditgate", "trainer"]) == 0
        assert main(["banditgate", "workers", "--only", "exporter"]) == 1
    finally:
        _stop(process)
    assert main(argv) == 1  # a stopped supervisor deletes its heartbeats
