"""Commands this package adds to `banditgate`: warm starts."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Annotated, Any

import typer

from banditgate.client import DEFAULT_URL, quoted
from banditgate.console import AdminKey, Url, call, console, control_client, fail, print_table
from banditgate.errors import BanditgateError
from banditgate.policy import validate_model
from banditgate.spec import parse_spec
from trainer.warmstart import train_from


def register(app: typer.Typer) -> None:
    app.command("train")(train)


def train(
    source: Annotated[
        Path, typer.Option("--from", help="Exported Parquet (file or directory) or DSJSON lines.")
    ],
    experiment: Annotated[str, typer.Option("--experiment", "-e")],
    publish: Annotated[bool, typer.Option(help="Publish the result as the serving policy.")] = True,
    out: Annotated[Path | None, typer.Option(help="Also write the model to this file.")] = None,
    force: Annotated[
        bool, typer.Option(help="Publish even if significantly worse than the serving policy.")
    ] = False,
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
) -> None:
    """Build a first policy from historical logs (warm start).

    The spec comes from the control plane (--url / BANDITGATE_URL); training runs
    here, on the local files; the model is published through the API.
    """
    api = control_client(url, admin_key)
    path = f"/v1/experiments/{quoted(experiment)}"
    spec = parse_spec(call(api, "GET", path)["spec"])
    try:
        result = train_from(source, spec)
        validate_model(spec, result.model)
    except BanditgateError as exc:
        fail(exc.message)
    if out is not None:
        out.write_bytes(result.model)
    version = None
    if publish:
        body = {
            "model": base64.b64encode(result.model).decode(),
            "source": "warmstart",
            "note": f"trained from {source}",
            "n_examples": result.examples,
            "ope": result.numbers,
            "force": force,
        }
        version = call(api, "POST", f"{path}/policies", body)["version"]["version"]
    rows = []
    for label, key in (("new policy", "candidate"), ("logging policy", "logging_policy")):
        numbers = result.numbers[key]
        dr = numbers["dr"]
        rows.append(
            [
                label,
                _fmt(numbers["ips"]["value"]),
                _fmt(numbers["snips"]["value"]),
                f"{_fmt(dr['value'])} [{_fmt(dr['lo'])}, {_fmt(dr['hi'])}]",
            ]
        )
    print_table(
        f"{experiment}: warm start from {result.examples} logged decisions",
        ["policy", "IPS", "SNIPS", "DR [95% CI]"],
        rows,
    )
    if version is not None:
        console.print(f"published {experiment} policy version {version}")


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"
