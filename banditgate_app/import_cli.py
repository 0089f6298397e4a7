"""`banditgate import ...`: history and settings from the systems users move from."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
import yaml

from banditgate.console import console, fail, print_table
from banditgate.errors import BanditgateError
from banditgate.settings import CoreSettings
from banditgate_app.personalizer_import import load_map, read_logs, spec_from_config, write_export


def register(app: typer.Typer) -> None:
    imports = typer.Typer(
        no_args_is_help=True, help="Bring logs and settings from the hosted Personalizer."
    )
    imports.command("personalizer")(personalizer)
    imports.command("personalizer-config")(personalizer_config)
    app.add_typer(imports, name="import")


MapFile = Annotated[
    Path | None,
    typer.Option("--map", help="JSON object renaming Personalizer action ids to arm names."),
]


def personalizer(
    logs: Annotated[Path, typer.Argument(help="DSJSON exported by Personalizer (file or folder).")],
    experiment: Annotated[str, typer.Option("--experiment", "-e")],
    mapping: MapFile = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Export folder to write (default: {data_dir}/export/{experiment})."),
    ] = None,
) -> None:
    """Convert Personalizer's logs to the export layout, for `banditgate train --from`."""
    target = out or CoreSettings().data_dir / "export" / experiment
    try:
        imported = read_logs(logs, experiment, load_map(mapping))
        write_export(imported, target)
    except BanditgateError as exc:
        fail(exc.message)
    rewarded = sum(1 for j in imported.examples if j["rewarded"])
    print_table(
        "imported from Personalizer",
        ["examples", "rewarded", "skipped (never activated)", "arms"],
        [
            [
                str(len(imported.examples)),
                str(rewarded),
                str(imported.skipped),
                ", ".join(imported.arms),
            ]
        ],
    )
    console.print(
        f"written to {target}; warm start: banditgate train --from {target} -e {experiment}"
    )


def personalizer_config(
    name: Annotated[str, typer.Option("--name", help="The experiment's name.")],
    service: Annotated[
        Path | None, typer.Option(help="Personalizer's service configuration (JSON).")
    ] = None,
    policy: Annotated[Path | None, typer.Option(help="Personalizer's policy (JSON).")] = None,
    actions: Annotated[
        str | None, typer.Option(help="Comma-separated action ids (the arms).")
    ] = None,
    logs: Annotated[
        Path | None, typer.Option(help="Or take the action ids from these DSJSON logs.")
    ] = None,
    mapping: MapFile = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the spec here (else stdout).")
    ] = None,
) -> None:
    """Convert Personalizer's service configuration and policy to an experiment spec."""
    try:
        renames = load_map(mapping)
        names = [renames.get(a, a) for a in (actions or "").split(",") if a.strip()]
        if logs is not None:
            for arm in read_logs(logs, name, renames).arms:
                if arm not in names:
                    names.append(arm)
        spec = spec_from_config(name, _read_json(service), _read_json(policy), names)
    except BanditgateError as exc:
        fail(exc.message)
    text = yaml.safe_dump(
        spec.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False
    )
    if output is None:
        console.print(text, end="")
    else:
        output.write_text(text)
        console.print(f"wrote {output}")


def _read_json(path: Path | None) -> Any:
    if path is None:
        return None
    try:
        return orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        fail(f"{path}: not readable JSON: {exc}")
