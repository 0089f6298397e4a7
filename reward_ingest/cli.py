"""Commands this package adds to `banditgate`: `ingest` and `export flush`."""

from __future__ import annotations

import signal
from types import FrameType
from typing import Annotated

import typer

export_app = typer.Typer(no_args_is_help=True, help="Parquet and DSJSON export of joined examples.")


def register(app: typer.Typer) -> None:
    app.command()(ingest)
    app.add_typer(export_app, name="export")


def ingest(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8081,
    workers: Annotated[
        bool, typer.Option(help="Run the joiner and exporter in this process too.")
    ] = True,
) -> None:
    """The reward webhook, with the joiner and exporter (scale out: run several)."""
    import uvicorn

    from banditgate.redis import resolve_redis_url
    from banditgate.serve import close_embedded, configure_logging
    from banditgate.settings import CoreSettings

    configure_logging()
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again; with the
    # default handler that would end the process before the embedded Redis is stopped.
    previous = signal.signal(signal.SIGTERM, _exit_quietly)
    _, embedded = resolve_redis_url(CoreSettings())
    try:
        uvicorn.run(
            "reward_ingest.app:create_standalone_app"
            if workers
            else "reward_ingest.app:create_ingest_app",
            factory=True,
            host=host,
            port=port,
            loop="uvloop",
            http="httptools",
            access_log=False,
            timeout_graceful_shutdown=15,
        )
    finally:
        close_embedded(embedded)
        signal.signal(signal.SIGTERM, previous)


def _exit_quietly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


@export_app.command("flush")
def export_flush(
    experiment: Annotated[
        str | None, typer.Option("--experiment", "-e", help="Only this experiment's files.")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the exporters.")] = 30.0,
) -> None:
    """Close the open export files now: everything joined so far lands in closed files."""
    from banditgate.cli import console, fail, with_redis
    from banditgate.redis import Redis
    from reward_ingest.flush import FlushOutcome, request_flush

    async def run(redis: Redis) -> FlushOutcome:
        return await request_flush(redis, experiment=experiment, timeout_s=timeout)

    outcome = with_redis(run)
    if outcome.exporters == 0:
        console.print("no exporter is running; there are no open files to close")
        return
    if not outcome.complete:
        fail(
            f"{len(outcome.replies)} of {outcome.exporters} exporters answered within {timeout:g}s "
            f"({outcome.files} files closed)",
            code=1,
        )
    console.print(f"{outcome.exporters} exporter(s) closed {outcome.files} file(s)")
