"""The `banditgate` command."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from banditgate.errors import BanditgateError, InvalidSpec
from banditgate.settings import CoreSettings
from banditgate.spec import ExperimentSpec, load_specs

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Route traffic to the model that earns it."
)
policy_app = typer.Typer(no_args_is_help=True, help="Policy versions in the registry.")
app.add_typer(policy_app, name="policy")


def _register_package_commands() -> None:
    """Each package contributes its commands from its own `cli` module."""
    from banditgate.demo.cli import demo
    from experiments.cli import register as register_experiments
    from reward_ingest.cli import register as register_ingest
    from trainer.cli import register as register_trainer

    register_ingest(app)
    register_trainer(app)
    register_experiments(app)
    app.command("demo")(demo)


console = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
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


def with_redis(fn: Any) -> Any:
    """Run `fn(redis)` against the configured Redis (or an embedded one)."""
    from banditgate.redis import connect, resolve_redis_url
    from banditgate.serve import close_embedded

    settings = CoreSettings()
    url, embedded = resolve_redis_url(settings)

    async def runner() -> Any:
        redis = connect(url)
        try:
            return await fn(redis)
        finally:
            await redis.aclose()

    try:
        return asyncio.run(runner())
    except BanditgateError as exc:
        fail(exc.message)
    finally:
        close_embedded(embedded)


Files = Annotated[list[Path], typer.Option("--file", "-f", help="Experiment spec (YAML or JSON).")]
Host = Annotated[str, typer.Option(help="Interface to bind.")]
Port = Annotated[int, typer.Option(help="Port to listen on.")]


@app.command()
def serve(
    file: Files,
    host: Host = "127.0.0.1",
    port: Port = 8080,
    workers: Annotated[int, typer.Option(min=1, help="HTTP worker processes on the port.")] = 1,
    background: Annotated[
        bool, typer.Option(help="Run joiner, trainer and controller too.")
    ] = True,
) -> None:
    """Every component in one command: router, reward webhook, joiner, trainer, control plane."""
    from banditgate.serve import configure_logging
    from banditgate.serve import serve as run

    configure_logging()
    specs = read_specs(file)
    run(specs, host=host, port=port, workers=workers, background=background)


@app.command()
def router(
    host: Host = "127.0.0.1",
    port: Port = 8080,
    workers: Annotated[int, typer.Option(min=1)] = 1,
    file: Annotated[list[Path] | None, typer.Option("--file", "-f")] = None,
) -> None:
    """Only the data plane (scale out: several routers behind a load balancer)."""
    import uvicorn

    from banditgate.redis import resolve_redis_url
    from banditgate.serve import apply_specs, close_embedded, configure_logging, exit_on_sigterm

    configure_logging()
    exit_on_sigterm()
    specs = read_specs(file or [])
    url, embedded = resolve_redis_url(CoreSettings())
    try:
        if specs:
            asyncio.run(apply_specs(url, specs))
        uvicorn.run(
            "router.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            loop="uvloop",
            http="httptools",
            access_log=False,
        )
    finally:
        close_embedded(embedded)


@app.command()
def workers(
    only: Annotated[
        str | None,
        typer.Option(help="Comma-separated subset of joiner, exporter, trainer, controller."),
    ] = None,
) -> None:
    """Background workers without HTTP: joiner, exporter, trainer, rollout controller."""
    from banditgate.redis import resolve_redis_url
    from banditgate.serve import close_embedded, configure_logging
    from banditgate.workers import WORKERS, run_workers

    configure_logging()
    names = {name for name, _ in WORKERS}
    chosen = None
    if only:
        chosen = {part.strip() for part in only.split(",") if part.strip()}
        unknown = sorted(chosen - names)
        if unknown:
            fail(f"--only: unknown workers {unknown}; choose from {sorted(names)}")
    url, embedded = resolve_redis_url(CoreSettings())
    try:
        asyncio.run(run_workers(url, only=chosen))
    finally:
        close_embedded(embedded)


@policy_app.command("publish")
def policy_publish(
    model: Annotated[Path, typer.Argument(help="VW model file (or JSON for static/thompson).")],
    experiment: Annotated[str, typer.Option("--experiment", "-e")],
    note: Annotated[str, typer.Option(help="Free text kept with the version.")] = "",
) -> None:
    """Publish a model by hand; routers swap it in at once."""
    from banditgate.policy import validate_model
    from banditgate.registry import PolicyRegistry
    from banditgate.store import ExperimentStore

    try:
        data = model.read_bytes()
    except OSError as exc:
        fail(f"cannot read {model}: {exc.strerror}")

    async def run(redis: Any) -> Any:
        spec = await ExperimentStore(redis).get(experiment)
        validate_model(spec, data)
        registry = PolicyRegistry(redis)
        parent = await registry.current_version(experiment)
        return await registry.publish(
            experiment,
            data,
            learner=spec.policy.learner,
            parent=parent,
            source="manual",
            arms=spec.arm_names,
            note=note,
        )

    record = with_redis(run)
    console.print(f"published [bold]{experiment}[/] policy version [bold]{record.version}[/]")


@policy_app.command("list")
def policy_list(experiment: Annotated[str, typer.Option("--experiment", "-e")]) -> None:
    """Versions with their lineage and off-policy numbers."""
    from banditgate.registry import PolicyRegistry

    async def run(redis: Any) -> Any:
        registry = PolicyRegistry(redis)
        return await registry.versions(experiment), await registry.current_version(experiment)

    versions, current = with_redis(run)
    table = Table(title=f"{experiment} policies")
    for column in ("version", "parent", "source", "examples", "created", "ope", ""):
        table.add_column(column)
    import datetime as dt

    for record in versions:
        created = dt.datetime.fromtimestamp(record.created_ms / 1000).strftime("%Y-%m-%d %H:%M:%S")
        ope = record.ope.get("candidate", {}).get("dr", {}) if record.ope else {}
        ope_text = (
            f"{ope.get('value', 0):.4f} [{ope.get('lo', 0):.4f}, {ope.get('hi', 0):.4f}]"
            if ope
            else ""
        )
        table.add_row(
            str(record.version),
            str(record.parent) if record.parent is not None else "-",
            record.source,
            str(record.n_examples),
            created,
            ope_text,
            "current" if record.version == current else "",
        )
    console.print(table)


@policy_app.command("activate")
def policy_activate(
    version: Annotated[int, typer.Argument()],
    experiment: Annotated[str, typer.Option("--experiment", "-e")],
) -> None:
    """Serve an earlier (or any) version again: a rollback."""
    from banditgate.registry import PolicyRegistry

    async def run(redis: Any) -> Any:
        return await PolicyRegistry(redis).activate(experiment, version, "activated from the CLI")

    with_redis(run)
    console.print(f"[bold]{experiment}[/] now serves policy version [bold]{version}[/]")


@app.command()
def validate(file: Files) -> None:
    """Check experiment specs without applying them."""
    specs = read_specs(file)
    for spec in specs:
        console.print(f"[green]ok[/] {spec.name} ({spec.mode}, {len(spec.arms)} arms)")


_register_package_commands()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
