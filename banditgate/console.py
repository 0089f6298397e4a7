"""What every command shares: the consoles, failing with a message, reading specs, the API client.

Markup is off on both consoles: a spec's name pattern `[a-z0-9]`, arm names and the
API's messages are data, and rich would take `[a-z0-9]` for a style and drop it. Style
whole lines with `style=` instead. Messages are not wrapped (soft wrap), so they can be
copied and searched; tables fit the terminal (see `print_table`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, NoReturn

import orjson
import typer
from rich.console import Console
from rich.table import Table

from banditgate.client import ApiError, ControlClient, Unreachable, first_key
from banditgate.errors import InvalidSpec
from banditgate.spec import ExperimentSpec, load_specs

console = Console(markup=False, highlight=False, soft_wrap=True)
err = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)

Url = Annotated[
    str,
    typer.Option(
        "--url",
        envvar="BANDITGATE_URL",
        help="Control plane URL (where `banditgate serve` or `control` listens).",
    ),
]
AdminKey = Annotated[
    str | None,
    typer.Option(
        "--admin-key",
        envvar=["BANDITGATE_ADMIN_KEYS", "BANDITGATE_ADMIN_KEY"],
        help="Admin key for changes; default: the first of the control plane's "
        "BANDITGATE_ADMIN_KEYS (BANDITGATE_ADMIN_KEY, the old name, also works).",
        show_default=False,
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the API's JSON instead of tables.")]


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"error: {message}", style="bold red")
    raise typer.Exit(code)


def read_specs(files: list[Path]) -> list[ExperimentSpec]:
    specs: list[ExperimentSpec] = []
    for path in files:
        try:
            specs.extend(load_specs(path))
        except InvalidSpec as exc:
            fail(exc.message)
    names = [spec.name for spec in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        fail(f"experiment names appear more than once: {duplicates}")
    return specs


def control_client(url: str, admin_key: str | None = None) -> ControlClient:
    """A client for the control plane; `admin_key` may be a BANDITGATE_ADMIN_KEYS list.

    Without one, reads send the first of BANDITGATE_ADMIN_KEYS or BANDITGATE_READ_KEYS.
    """
    if admin_key is None:
        for variable in ("BANDITGATE_ADMIN_KEYS", "BANDITGATE_ADMIN_KEY", "BANDITGATE_READ_KEYS"):
            admin_key = admin_key or os.environ.get(variable)
    return ControlClient(url, first_key(admin_key))


def call(
    api: ControlClient, method: str, path: str, body: Any = None, *, timeout_s: float | None = None
) -> Any:
    """One API call; an error answer fails the command with the API's own message."""
    try:
        return api.request(method, path, body, timeout_s=timeout_s)
    except ApiError as exc:
        where = f" (field {exc.field})" if exc.field else ""
        fail(f"{exc.message}{where} [HTTP {exc.status} {exc.type}]", code=1)
    except Unreachable as exc:
        fail(str(exc), code=1)


def dump(data: Any) -> None:
    """JSON for --json, as the API returned it."""
    console.print_json(orjson.dumps(data).decode())


def print_table(
    title: str,
    columns: list[str],
    rows: list[list[str]],
    *,
    wide: bool = False,
    right: tuple[str, ...] = (),
) -> None:
    """A table when it fits the terminal unwrapped (or with `wide`), else one block per row.

    A squeezed rich table cuts numbers and names short; a block per row
    (`first column: value`, then `column: value` pairs) reads at any width.
    """
    table = Table()
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    natural = console.measure(table, options=console.options.update_width(10_000)).maximum
    console.print(title, style="bold")
    if natural <= console.width:
        console.print(table)
        return
    if wide:
        Console(width=natural, markup=False, highlight=False, file=console.file).print(table)
        return
    for row in rows:
        first = f"{columns[0]}: {row[0]}" if columns[0] else row[0]
        console.print(first, overflow="fold", soft_wrap=False)
        pairs = [f"{c}: {v}" if c else v for c, v in zip(columns[1:], row[1:], strict=True) if v]
        for line in _pack(pairs, console.width - 2):
            console.print("  " + line, overflow="fold", soft_wrap=False)


def _pack(items: list[str], width: int, sep: str = "   ") -> list[str]:
    """Greedy: as many items on a line as fit in `width`."""
    lines: list[str] = []
    line = ""
    for item in items:
        if line and len(line) + len(sep) + len(item) > width:
            lines.append(line)
            line = ""
        line = f"{line}{sep}{item}" if line else item
    if line:
        lines.append(line)
    return lines
