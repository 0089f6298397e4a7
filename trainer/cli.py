"""Commands this package adds to `banditgate`: warm starts."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from banditgate.console import console, fail, with_redis
from banditgate.errors import BanditgateError
from banditgate.policy import validate_model
from banditgate.registry import PolicyRegistry
from banditgate.store import ExperimentStore
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
) -> None:
    """Build a first policy from historical logs (warm start)."""

    async def run(redis: Any) -> Any:
        spec = await ExperimentStore(redis).get(experiment)
        result = await asyncio.to_thread(train_from, source, spec)
        validate_model(spec, result.model)
        version = None
        if publish:
            registry = PolicyRegistry(redis)
            version = await registry.publish(
                experiment,
                result.model,
                learner=spec.policy.learner,
                parent=await registry.current_version(experiment),
                n_examples=result.examples,
                source="warmstart",
                ope=result.numbers,
                note=f"trained from {source}",
            )
        return result, version

    try:
        result, version = with_redis(run)
    except BanditgateError as exc:
        fail(exc.message)
    if out is not None:
        out.write_bytes(result.model)
    table = Table(title=f"{experiment}: warm start from {result.examples} logged decisions")
    for column in ("policy", "IPS", "SNIPS", "DR [95% CI]"):
        table.add_column(column)
    for label, key in (("new policy", "candidate"), ("logging policy", "logging_policy")):
        numbers = result.numbers[key]
        dr = numbers["dr"]
        table.add_row(
            label,
            _fmt(numbers["ips"]["value"]),
            _fmt(numbers["snips"]["value"]),
            f"{_fmt(dr['value'])} [{_fmt(dr['lo'])}, {_fmt(dr['hi'])}]",
        )
    console.print(table)
    if version is not None:
        console.print(f"published {experiment} policy version {version.version}")


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"
