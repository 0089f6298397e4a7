"""`serve`'s background workers process: restarted with backoff, its state shared through a file.

`serve` runs the HTTP app and, as a child, `banditgate workers`. A thread of the
parent watches the child: when it exits (a crash, an OOM kill, a SIGKILL) it is
started again after a backoff (1 s, doubling up to a minute; back to 1 s once a
run lasted a minute). The child gets SIGTERM from the kernel when the parent dies,
even by SIGKILL, so it never outlives `serve`.

The parent writes the child's state to a small JSON file (atomically: write, then
rename) whose path every HTTP worker process inherits in `STATUS_FILE_VARIABLE`;
readiness and /metrics read it, whichever process answers. A child that keeps
dying (`CRASH_LOOP` exits in a row, each within a minute of its start) makes
`serve` unready; a single restart is reported in the body only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from banditgate.process import spawn_child, stop_process

log = logging.getLogger(__name__)

STATUS_FILE_VARIABLE = "BANDITGATE_WORKERS_STATUS_FILE"
CRASH_LOOP = 3
STABLE_S = 60.0


@dataclass
class WorkersStatus:
    pid: int = 0
    running: bool = False
    restarts: int = 0
    exits_in_a_row: int = 0
    last_exit_code: int | None = None
    started_ms: int = 0

    @property
    def crash_looping(self) -> bool:
        return self.exits_in_a_row >= CRASH_LOOP


class WorkersChild:
    """`banditgate workers` as a child of `serve`: restarted with backoff if it dies."""

    def __init__(
        self,
        status_file: Path,
        *,
        args: tuple[str, ...] = ("-m", "banditgate_app.cli", "workers"),
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
    ) -> None:
        self.status_file = status_file
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None
        self.status = WorkersStatus()
        self._backoff_s = backoff_s
        self._first_backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._started = 0.0

    def start(self) -> None:
        env = {**os.environ, "BANDITGATE_WORKERS_CHILD": "1"}
        self.process = spawn_child(self.args, env)
        self._started = time.monotonic()
        self.status.pid = self.process.pid
        self.status.running = True
        self.status.started_ms = int(time.time() * 1000)
        self._write()

    def watch(self, stopping: threading.Event) -> None:
        """Until `stopping` is set: restart the child whenever it has exited."""
        while not stopping.is_set():
            process = self.process
            if process is not None and process.poll() is not None and not stopping.is_set():
                self._exited(process.returncode)
                if stopping.wait(self._backoff_s):
                    return
                self._backoff_s = min(self._backoff_s * 2, self._max_backoff_s)
                self.status.restarts += 1
                self.start()
            stopping.wait(0.2)

    def _exited(self, code: int) -> None:
        lasted = time.monotonic() - self._started
        if lasted > STABLE_S:
            self._backoff_s = self._first_backoff_s
            self.status.exits_in_a_row = 0
        self.status.exits_in_a_row += 1
        self.status.running = False
        self.status.last_exit_code = code
        self._write()
        log.error(
            "background workers exited with %s after %.0fs; restarting in %.0fs",
            code,
            lasted,
            self._backoff_s,
        )

    def stop(self) -> None:
        stop_process(self.process)
        self.status.running = False
        self._write()

    def _write(self) -> None:
        temporary = self.status_file.with_suffix(".tmp")
        try:
            temporary.write_bytes(orjson.dumps(asdict(self.status)))
            temporary.replace(self.status_file)
        except OSError as exc:
            log.warning("workers status not written to %s: %s", self.status_file, exc)


def read_status(path: str | None = None) -> WorkersStatus | None:
    """The child's state as the parent last wrote it; None when no workers child is run."""
    path = path or os.environ.get(STATUS_FILE_VARIABLE)
    if not path:
        return None
    try:
        data: dict[str, Any] = orjson.loads(Path(path).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        # Between serve's start and the child's first start, or a torn read: not running.
        return WorkersStatus()
    return WorkersStatus(**{k: v for k, v in data.items() if k in WorkersStatus.__annotations__})


def describe(status: WorkersStatus) -> dict[str, Any]:
    state = "running" if status.running else "restarting"
    if status.crash_looping:
        state = "crash-looping"
    return {
        "status": state,
        "pid": status.pid,
        "restarts": status.restarts,
        "last_exit_code": status.last_exit_code,
    }


def render_metrics(status: WorkersStatus) -> bytes:
    lines = [
        "# HELP banditgate_workers_child_up 1 while serve's background workers process runs.",
        "# TYPE banditgate_workers_child_up gauge",
        f"banditgate_workers_child_up {int(status.running)}",
        "# HELP banditgate_workers_child_restarts_total Restarts of serve's background workers process.",
        "# TYPE banditgate_workers_child_restarts_total counter",
        f"banditgate_workers_child_restarts_total {status.restarts}",
    ]
    return ("\n".join(lines) + "\n").encode()


@contextlib.contextmanager
def status_file_env(directory: Path) -> Any:
    """Export the status file's path for the HTTP processes; removed on the way out."""
    path = directory / "workers-status.json"
    os.environ[STATUS_FILE_VARIABLE] = str(path)
    try:
        yield path
    finally:
        os.environ.pop(STATUS_FILE_VARIABLE, None)
        with contextlib.suppress(OSError):
            path.unlink()
