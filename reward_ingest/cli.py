"""Commands this package adds to `banditgate`."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    return None
