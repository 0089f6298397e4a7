"""The container health check: probes whatever `banditgate` command the container runs.

One image runs every command, so the Dockerfile's HEALTHCHECK calls
`python -m banditgate_app.healthcheck`, which reads the container's command line
(PID 1, under `docker-init` or not) and probes it:

- `serve`, `router`, `ingest`, `control`: GET /health/ready on the command's port;
- `workers`, `trainer`: `banditgate workers --check` (fresh heartbeat keys of the
  same workers on this host);
- `backends`: GET /ping on each classifier's port;
- anything else (a one-off CLI command): healthy.

Exit 0 when healthy, 1 when not. Only the standard library is imported for the
HTTP probes: they run every few seconds.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

# The port each HTTP command listens on without --port (asserted against the CLI by a test).
DEFAULT_PORTS = {"serve": 8080, "router": 8080, "ingest": 8081, "control": 8082}
BACKEND_PORTS = "9101,9102"
WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}


@dataclass(frozen=True)
class Probe:
    kind: str  # "http", "workers" or "none"
    urls: tuple[str, ...] = ()
    check: tuple[str, ...] = ()  # arguments after `banditgate`


def banditgate_args(cmdline: list[str]) -> list[str]:
    """The arguments after the `banditgate` executable (or `-m banditgate_app.cli`)."""
    for index, arg in enumerate(cmdline):
        if Path(arg).name == "banditgate" or arg == "banditgate_app.cli":
            return cmdline[index + 1 :]
    return []


def option(args: list[str], name: str) -> str | None:
    for index, arg in enumerate(args):
        if arg == name and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    return None


def probe_for(args: list[str]) -> Probe:
    command = next((arg for arg in args if not arg.startswith("-")), "")
    host = option(args, "--host") or "127.0.0.1"
    if host in WILDCARD_HOSTS:
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    if command in DEFAULT_PORTS:
        port = option(args, "--port") or str(DEFAULT_PORTS[command])
        return Probe("http", (f"http://{host}:{port}/health/ready",))
    if command == "backends":
        ports = (option(args, "--ports") or BACKEND_PORTS).split(",")
        return Probe("http", tuple(f"http://{host}:{port.strip()}/ping" for port in ports))
    if command == "workers":
        only = option(args, "--only")
        return Probe("workers", check=("workers", "--check", *(["--only", only] if only else [])))
    if command == "trainer":
        return Probe("workers", check=("workers", "--check", "--only", "trainer"))
    return Probe("none")


def run(probe: Probe, timeout_s: float = 3.0) -> int:
    if probe.kind == "workers":
        argv = [sys.executable, "-m", "banditgate_app.cli", *probe.check]
        return 0 if subprocess.call(argv, timeout=30) == 0 else 1
    for url in probe.urls:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                if response.status != 200:
                    print(f"{url}: HTTP {response.status}")
                    return 1
        except (urllib.error.URLError, OSError) as exc:
            print(f"{url}: {exc}")
            return 1
    return 0


def container_command() -> list[str]:
    raw = Path("/proc/1/cmdline").read_bytes()
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def main(cmdline: list[str] | None = None) -> int:
    """Probe `cmdline` (by default the container's PID 1)."""
    return run(probe_for(banditgate_args(cmdline or container_command())))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or None))
