"""Commands this package adds to `banditgate`: `export flush`."""

from __future__ import annotations

from typing import Annotated

import typer

from banditgate.console import console, fail, with_redis
from banditgate.export_flush import FlushOutcome, request_flush
from banditgate.redis import Redis

export_app = typer.Typer(no_args_is_help=True, help="Parquet and DSJSON export of joined examples.")


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")


@export_app.command("flush")
def export_flush(
    experiment: Annotated[
        str | None, typer.Option("--experiment", "-e", help="Only this experiment's files.")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the exporters.")] = 30.0,
) -> None:
    """Close the open export files now: everything joined so far lands in closed files."""

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
