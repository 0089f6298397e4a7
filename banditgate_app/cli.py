"""The `banditgate` command: every process kind starts here, and each package adds its commands."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from banditgate.arm_hosts import ArmHosts
from banditgate.client import DEFAULT_URL, quoted
from banditgate.console import (
    AdminKey,
    AsJson,
    Url,
    call,
    console,
    control_client,
    dump,
    fail,
    print_table,
    read_specs,
)
from banditgate.errors import BanditgateError
from banditgate.process import (
    configure_logging,
    exit_on_sigterm,
    redis_url,
    run_uvicorn,
)
from banditgate.redis import connect, redacted
from banditgate.settings import CoreSettings
from banditgate.spec import ExperimentSpec
from banditgate.store import apply_specs
from banditgate.supervisor import Supervisor, check_heartbeats
from banditgate_app import workers as worker_registry
from banditgate_app.demo.backend import EXAMPLE_PORTS, run_classifiers
from banditgate_app.demo.cli import demo
from banditgate_app.demo.reviews import SCENARIOS
from banditgate_app.exposure import Exposed, check_exposure
from banditgate_app.import_cli import register as register_import
from banditgate_app.workers_child import WorkersChild, status_file_env
from experiments.cli import register as register_experiments
from experiments.settings import ControlSettings
from monitor.cli import register as register_monitor
from reward_ingest.cli import register as register_ingest
from trainer.cli import register as register_trainer

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Route traffic to the model that earns it."
)
policy_app = typer.Typer(
    no_args_is_help=True,
    help="Policy versions in the registry, through the control plane's API (--url / BANDITGATE_URL).",
)
app.add_typer(policy_app, name="policy")
register_ingest(app)
register_trainer(app)
register_experiments(app)
register_monitor(app)
app.command("demo")(demo)
register_import(app)

Files = Annotated[list[Path], typer.Option("--file", "-f", help="Experiment spec (YAML or JSON).")]
OptionalFiles = Annotated[
    list[Path] | None, typer.Option("--file", "-f", help="Experiment specs to apply first.")
]
Host = Annotated[str, typer.Option(help="Interface to bind.")]
Port = Annotated[int, typer.Option(help="Port to listen on.")]
HttpWorkers = Annotated[int, typer.Option(min=1, help="HTTP worker processes on the port.")]
Insecure = Annotated[
    bool,
    typer.Option(
        "--insecure",
        help="Listen on a non-loopback interface without admin keys (trusted networks).",
    ),
]


def _exposure(host: str, insecure: bool) -> None:
    try:
        note = check_exposure(host, insecure=insecure)
    except Exposed as exc:
        fail(str(exc), code=2)
    if note:
        console.print(note, markup=False)


def _apply(url: str, specs: list[ExperimentSpec], reason: str) -> None:
    hosts = ArmHosts.parse(ControlSettings().arm_hosts)
    for spec in specs:
        try:
            hosts.check_document(spec.model_dump(mode="json"), where=f"{spec.name}: arms")
        except BanditgateError as exc:
            fail(exc.message)

    async def run() -> None:
        redis = connect(url)
        try:
            await apply_specs(redis, specs, reason=reason)
        finally:
            await redis.aclose()

    if specs:
        asyncio.run(run())


def _http_process(
    factory: str, files: list[Path] | None, reason: str, *, host: str, port: int, workers: int
) -> None:
    """Apply specs, then serve `factory` until SIGTERM; an embedded Redis lives as long."""
    configure_logging()
    specs = read_specs(files or [])
    exit_on_sigterm()
    with redis_url() as url:
        _apply(url, specs, reason)
        run_uvicorn(factory, host=host, port=port, workers=workers)


@app.command()
def serve(
    file: Files,
    host: Host = "127.0.0.1",
    port: Port = 8080,
    workers: HttpWorkers = 1,
    background: Annotated[
        bool, typer.Option(help="Run joiner, exporter, trainer and controller too.")
    ] = True,
    insecure: Insecure = False,
) -> None:
    """Every component in one command: router, reward webhook, joiner, trainer, control plane."""
    _exposure(host, insecure)
    configure_logging()
    specs = read_specs(file)
    exit_on_sigterm()
    with redis_url() as url, tempfile.TemporaryDirectory(prefix="banditgate-serve-") as state:
        _apply(url, specs, "serve -f")
        if not background:
            run_uvicorn("banditgate_app.apps:serve_app", host=host, port=port, workers=workers)
            return
        with status_file_env(Path(state)) as status_file:
            child = WorkersChild(status_file)
            stopping = threading.Event()
            watcher = threading.Thread(target=child.watch, args=(stopping,), daemon=True)
            try:
                child.start()
                watcher.start()
                run_uvicorn("banditgate_app.apps:serve_app", host=host, port=port, workers=workers)
            finally:
                stopping.set()
                child.stop()


@app.command()
def router(
    host: Host = "127.0.0.1",
    port: Port = 8080,
    workers: HttpWorkers = 1,
    file: OptionalFiles = None,
) -> None:
    """Only the data plane (scale out: several routers behind a load balancer)."""
    _http_process(
        "banditgate_app.apps:router_app", file, "router -f", host=host, port=port, workers=workers
    )


@app.command()
def ingest(host: Host = "127.0.0.1", port: Port = 8081, workers: HttpWorkers = 1) -> None:
    """Only the reward webhook (scale out: run several; the joiner runs under `workers`)."""
    _http_process("banditgate_app.apps:ingest_app", None, "", host=host, port=port, workers=workers)


@app.command()
def control(
    host: Host = "127.0.0.1",
    port: Port = 8082,
    workers: HttpWorkers = 1,
    file: OptionalFiles = None,
    insecure: Insecure = False,
) -> None:
    """Only the control plane: experiments API, dashboards and /metrics."""
    _exposure(host, insecure)
    _http_process(
        "banditgate_app.apps:control_app", file, "control -f", host=host, port=port, workers=workers
    )


@app.command("workers")
def workers_command(
    only: Annotated[
        str | None,
        typer.Option(help="Comma-separated subset of joiner, exporter, trainer, controller."),
    ] = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Exit 0 if these workers have a fresh heartbeat on this host, else 1."
        ),
    ] = False,
) -> None:
    """Background workers without HTTP: joiner, exporter, trainer, rollout controller."""
    chosen = {part.strip() for part in only.split(",") if part.strip()} if only else None
    try:
        selected = worker_registry.select(chosen)
    except ValueError as exc:
        fail(f"--only: {exc}")
    if check:
        _check_workers(list(selected))
        return
    _run_workers(selected)


@app.command()
def trainer() -> None:
    """Only the trainer: learn from joined examples, gate, publish (run several; one acts per experiment)."""
    _run_workers(worker_registry.select({"trainer"}))


def _run_workers(selected: dict[str, Any]) -> None:
    configure_logging()

    async def run(url: str) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        redis = connect(url)
        try:
            await Supervisor(redis, selected).run(stop)
        finally:
            await redis.aclose()

    with redis_url() as url:
        asyncio.run(run(url))


def _check_workers(names: list[str]) -> None:
    url = CoreSettings().redis_url
    if not url:
        fail("--check reads heartbeats from Redis: set BANDITGATE_REDIS_URL", code=1)

    async def read() -> dict[str, Any]:
        redis = connect(url)
        try:
            return await check_heartbeats(redis, names)
        finally:
            await redis.aclose()

    console.print(f"heartbeats in {redacted(url)} (BANDITGATE_REDIS_URL)")
    beats = asyncio.run(read())
    dead = [name for name, beat in beats.items() if beat is None]
    for name, beat in beats.items():
        state = "dead" if beat is None else f"live (pid {beat['pid']}, {beat['crashes']} crashes)"
        console.print(f"{name}: {state}", markup=False)
    if dead:
        raise typer.Exit(1)


@app.command()
def backends(
    host: Host = "127.0.0.1",
    ports: Annotated[
        str, typer.Option(help="bert-1's and bert-2's ports, comma-separated.")
    ] = ",".join(map(str, EXAMPLE_PORTS)),
    scenario: Annotated[
        str, typer.Option(help="seed: bert-1 is better everywhere; contextual: each on its kind.")
    ] = "seed",
) -> None:
    """The demo's two review classifiers, at the ports the example specs use (9101, 9102)."""
    configure_logging()
    if scenario not in SCENARIOS:
        fail(f"--scenario: choose from {', '.join(sorted(SCENARIOS))}")
    try:
        chosen = [int(port) for port in ports.split(",")]
    except ValueError:
        fail("--ports: two port numbers, like 9101,9102")
    classifiers = SCENARIOS[scenario]
    if len(chosen) != len(classifiers):
        fail(f"--ports: {len(classifiers)} port numbers, like 9101,9102")

    def started(urls: dict[str, str]) -> None:
        for name, url in urls.items():
            console.print(f"{name} ({scenario}) at {url}/invocations", markup=False)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_classifiers(classifiers, chosen, stop, host=host, started=started)

    try:
        asyncio.run(run())
    except OSError as exc:
        fail(f"cannot listen on {host} ports {ports}: {exc.strerror}")


@policy_app.command("publish")
def policy_publish(
    model: Annotated[Path, typer.Argument(help="VW model file (or JSON for static/thompson).")],
    experiment: Annotated[str, typer.Option("--experiment", "-e")],
    note: Annotated[str, typer.Option(help="Free text kept with the version.")] = "",
    activate: Annotated[bool, typer.Option(help="Serve it at once.")] = True,
    force: Annotated[
        bool,
        typer.Option(
            help="Publish even if significantly worse than the serving policy off-policy."
        ),
    ] = False,
    url: Url = DEFAULT_URL,
    admin_key: AdminKey = None,
) -> None:
    """Publish a model by hand: checked against the experiment and, off-policy on recent joined
    examples, against the serving policy (refused if significantly worse, unless --force)."""
    try:
        data = model.read_bytes()
    except OSError as exc:
        fail(f"cannot read {model}: {exc.strerror}")
    body = {
        "model": base64.b64encode(data).decode(),
        "note": note,
        "source": "manual",
        "activate": activate,
        "force": force,
    }
    published = call(
        control_client(url, admin_key),
        "POST",
        f"/v1/experiments/{quoted(experiment)}/policies",
        body,
    )
    version = published["version"]["version"]
    _print_check(published.get("check"))
    tail = "" if activate else f" (not serving it; `banditgate policy activate {version}` does)"
    console.print(f"published {experiment} policy version {version}{tail}")


def _print_check(check: dict[str, Any] | None) -> None:
    """The off-policy check's estimates and verdict, as the control plane reported them."""
    if not check:
        return
    console.print(check["report"], markup=False, highlight=False)
    console.print(("forced past the check: " if check["refused"] else "") + check["reason"])


@policy_app.command("list")
def policy_list(
    experiment: Annotated[str, typer.Option("--experiment", "-e")],
    url: Url = DEFAULT_URL,
    as_json: AsJson = False,
    wide: Annotated[bool, typer.Option("--wide", help="One table however wide.")] = False,
) -> None:
    """Versions with their lineage and off-policy numbers."""
    data = call(control_client(url), "GET", f"/v1/experiments/{quoted(experiment)}/policies")
    if as_json:
        dump(data)
        return
    rows = []
    for record in data["versions"]:
        created = dt.datetime.fromtimestamp(record["created_ms"] / 1000)
        ope = (record.get("ope") or {}).get("candidate", {}).get("dr", {})
        ope_text = (
            f"{ope.get('value', 0):.4f} [{ope.get('lo', 0):.4f}, {ope.get('hi', 0):.4f}]"
            if ope
            else ""
        )
        rows.append(
            [
                str(record["version"]),
                str(record["parent"]) if record["parent"] is not None else "-",
                record["source"],
                str(record["n_examples"]),
                created.strftime("%Y-%m-%d %H:%M:%S"),
                ope_text,
                "current" if record["version"] == data["current"] else "",
            ]
        )
    columns = ["version", "parent", "source", "examples", "created", "DR [95% CI]", ""]
    print_table(f"{experiment} policies", columns, rows, wide=wide)


@policy_app.command("activate")
def policy_activate(
    version: Annotated[int, typer.Argument()],
    experiment: Annotated[str, typer.Option("--experiment", "-e")],
    url: Url = DEFAULT_URL,
    force: Annotated[
        bool,
        typer.Option(help="Serve it even if significantly worse than the serving policy."),
    ] = False,
    admin_key: AdminKey = None,
) -> None:
    """Serve an earlier (or any) version again: a rollback. The model must still fit the spec,
    and pass the same off-policy check as a publish (unless --force)."""
    answer = call(
        control_client(url, admin_key),
        "POST",
        f"/v1/experiments/{quoted(experiment)}/policies/{version}/activate"
        + ("?force=true" if force else ""),
    )
    _print_check(answer.get("check"))
    console.print(f"{experiment} now serves policy version {version}")


@app.command()
def validate(file: Files) -> None:
    """Check experiment specs without applying them."""
    specs = read_specs(file)
    for spec in specs:
        console.print(f"ok {spec.name} ({spec.mode}, {len(spec.arms)} arms)")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
