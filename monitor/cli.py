"""Commands this package adds to `banditgate`: `monitor baseline`, `monitor show`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import orjson
import typer

from banditgate.client import DEFAULT_URL, quoted
from banditgate.console import AdminKey, Url, call, console, control_client, fail, print_table
from banditgate.errors import BanditgateError
from monitor.check import baseline_from_file

monitor_app = typer.Typer(help="Data-quality and drift monitoring of captured traffic.")


def register(app: typer.Typer) -> None:
    app.add_typer(monitor_app, name="monitor")


@monitor_app.command("baseline")
def baseline(
    experiment: Annotated[str, typer.Option("--experiment", "-e")],
    source: Annotated[
        Path,
        typer.Option(
            "--from",
            help="Training data: Parquet, CSV (columns named like flattened request paths, "
            "e.g. features.0) or JSON lines (one request body per line).",
        ),
    ],
    out: Annotated[
        Path | None, typer.Option(help="Also write statistics.json and constraints.json here.")
    ] = None,
    upload: Annotated[bool, typer.Option(help="Store it as the experiment's baseline.")] = True,
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
) -> None:
    """Profile training data into a baseline (statistics and constraints) and store it."""
    if not source.is_file():
        fail(f"{source}: no such file")
    try:
        result = baseline_from_file(source)
    except BanditgateError as exc:
        fail(exc.message)
    report = result["report"]
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for name in ("statistics", "constraints"):
            (out / f"{name}.json").write_bytes(
                orjson.dumps(result[name], option=orjson.OPT_INDENT_2)
            )
    rows = [
        [f["name"], f["inferred_type"], f"{f['completeness']:.3f}"]
        for f in result["statistics"]["features"]
    ]
    print_table(f"baseline of {source.name}", ["feature", "type", "completeness"], rows)
    console.print(f"{report['rows']:,} rows, {report['features']} features")
    for key, what in (
        ("empty_features", "empty (no value in any row)"),
        ("mixed_type_features", "mixed numbers and text"),
    ):
        if report[key]:
            console.print(f"{what}: {', '.join(report[key])}")
    if upload:
        api = control_client(url, admin_key)
        call(
            api,
            "PUT",
            f"/v1/experiments/{quoted(experiment)}/monitor/baseline",
            {"statistics": result["statistics"], "constraints": result["constraints"]},
        )
        console.print(f"stored as {experiment}'s baseline")


@monitor_app.command("show")
def show(
    experiment: Annotated[str, typer.Option("--experiment", "-e")],
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
) -> None:
    """The latest check of each arm: records read and violations found."""
    api = control_client(url, admin_key)
    answer = call(api, "GET", f"/v1/experiments/{quoted(experiment)}/monitor")
    rows = []
    for arm, report in sorted((answer.get("arms") or {}).items()):
        found = report.get("violations") or []
        rows.append([arm, f"{report.get('records', 0):,}", str(len(found))])
        for violation in found:
            console.print(f"{arm}: {violation['feature_name']}: {violation['description']}")
    print_table(f"{experiment}: latest checks", ["arm", "records", "violations"], rows)
