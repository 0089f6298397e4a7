"""Commands this package adds to `banditgate`: `export flush`."""

from __future__ import annotations

from typing import Annotated

import typer

from banditgate.client import DEFAULT_URL
from banditgate.console import AdminKey, Url, call, console, control_client, fail

export_app = typer.Typer(
    no_args_is_help=True,
    help="Parquet and DSJSON export of joined examples, through the control plane's API "
    "(--url / BANDITGATE_URL).",
)


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")


@export_app.command("flush")
def export_flush(
    experiment: Annotated[
        str | None, typer.Option("--experiment", "-e", help="Only this experiment's files.")
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=0.1, max=300, help="Seconds to wait for the exporters.")
    ] = 30.0,
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
) -> None:
    """Close the open export files now: everything joined so far lands in closed files."""
    body = {"experiment": experiment, "timeout_s": timeout}
    outcome = call(
        control_client(url, admin_key), "POST", "/v1/export/flush", body, timeout_s=timeout + 30
    )
    left = outcome.get("unexported", 0)
    if outcome["exporters"] == 0:
        if left:
            fail(f"no exporter is running; {left} joined examples are not in closed files", code=1)
        console.print("no exporter is running; there are no open files to close")
        return
    if not outcome["complete"]:
        fail(
            f"{outcome['answered']} of {outcome['exporters']} exporters answered within "
            f"{timeout:g}s ({outcome['files']} files closed); "
            f"{left} joined examples are not in closed files yet",
            code=1,
        )
    console.print(f"{outcome['exporters']} exporter(s) closed {outcome['files']} file(s)")
