"""Process bootstrap shared by every command: logging, signals, Redis, uvicorn, children."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from banditgate.redis import EmbeddedRedis, RedisModeError, check_server_mode, resolve_redis_url
from banditgate.settings import CoreSettings

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def configure_logging(settings: CoreSettings | None = None) -> None:
    level = (settings or CoreSettings()).log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def exit_on_sigterm() -> None:
    """Make SIGTERM unwind the stack (SystemExit), so `finally` blocks stop what we started.

    uvicorn handles SIGTERM itself, shuts down gracefully, restores the previous
    handler and raises the signal again; with the default handler that kills the
    process before cleanup runs. With this one, the re-raised signal exits cleanly.
    """

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def redis_url(settings: CoreSettings | None = None) -> Iterator[str]:
    """The configured Redis URL, or an embedded server's, stopped on the way out."""
    url, embedded = resolve_redis_url(settings or CoreSettings())
    try:
        if embedded is None:
            try:
                check_server_mode(url)
            except RedisModeError as exc:
                # Every command starts here: refuse to start, with the reason and no traceback.
                raise SystemExit(f"error: {exc}") from None
        yield url
    finally:
        close_embedded(embedded)


def close_embedded(embedded: EmbeddedRedis | None) -> None:
    if embedded is not None:
        embedded.close()


def run_uvicorn(
    factory: str,
    *,
    host: str,
    port: int,
    workers: int = 1,
    graceful_shutdown_s: int = 15,
) -> None:
    """Serve `module:function` (an app factory) with the options every command shares.

    With several workers, each counts its own metrics in a shared directory so any of
    them answers /metrics for all (see banditgate/metrics.py).
    """
    import uvicorn  # only the HTTP commands pay for it (CLI start-up)

    from banditgate.http_protocol import GuardedHttpToolsProtocol

    with _metrics_dir(workers):
        uvicorn.run(
            factory,
            factory=True,
            host=host,
            port=port,
            workers=workers,
            loop="uvloop",
            http=GuardedHttpToolsProtocol,  # httptools, with a header-read timeout
            lifespan="on",
            access_log=False,
            timeout_graceful_shutdown=graceful_shutdown_s,
            timeout_keep_alive=5,
        )


@contextlib.contextmanager
def _metrics_dir(workers: int) -> Iterator[None]:
    """A fresh PROMETHEUS_MULTIPROC_DIR for several workers (they inherit it), removed after.

    One set by the operator is used as it is (empty it between runs: its counters add up).
    """
    # Here, not at the top: prometheus_client costs every CLI command ~25-130 ms to import.
    from banditgate.metrics import MULTIPROCESS_DIR_VARIABLE, multiprocess_dir

    if workers <= 1 or multiprocess_dir() is not None:
        yield
        return
    path = tempfile.mkdtemp(prefix="banditgate-metrics-")
    os.environ[MULTIPROCESS_DIR_VARIABLE] = path
    try:
        yield
    finally:
        os.environ.pop(MULTIPROCESS_DIR_VARIABLE, None)
        shutil.rmtree(path, ignore_errors=True)


def _die_with(parent: int) -> Callable[[], None]:
    def die_with_parent() -> None:
        """In the child, before exec: the kernel sends SIGTERM when the parent dies (Linux)."""
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        # The parent died between fork and prctl: the signal will never come.
        if os.getppid() != parent:
            os._exit(1)

    return die_with_parent


def spawn_child(args: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`python -m ...` as a child that does not outlive this process, even when it is SIGKILLed.

    The death signal is tied to the thread that starts the child: start it from a
    thread that lives as long as the child should.
    """
    preexec = _die_with(os.getpid()) if sys.platform.startswith("linux") else None
    return subprocess.Popen([sys.executable, *args], env=env, preexec_fn=preexec)


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 20.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
