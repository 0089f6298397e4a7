"""`banditgate demo`: progress while it runs, a table and an HTML report when it ends."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from banditgate.console import console, err
from banditgate_app.demo.report import render, write
from banditgate_app.demo.run import DemoOptions, run_demo


def demo(
    requests: Annotated[int, typer.Option(min=1, help="Requests to send.")] = 10_000,
    scenario: Annotated[
        str,
        typer.Option(
            help="seed: one model better everywhere; contextual: each best on its own kind of review."
        ),
    ] = "seed",
    seed: Annotated[int, typer.Option(help="Seeds the traffic and the reward delays.")] = 0,
    concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight.")] = 16,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the results as JSON here.")
    ] = None,
    report: Annotated[Path, typer.Option(help="Write the HTML report here.")] = Path(
        "reports/demo.html"
    ),
) -> None:
    """Run the whole loop on a built-in scenario: two review classifiers, real rewards, learning."""
    options = DemoOptions(requests=requests, scenario=scenario, seed=seed, concurrency=concurrency)
    console.print(
        Text.assemble(
            ("banditgate demo", "bold"),
            f": {scenario} scenario, {requests:,} requests, seed {seed}. "
            "Two review classifiers; the reward is 1 when the predicted rating is right.",
        )
    )
    with Progress(
        TextColumn("[bold]routing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(
            "avg reward [cyan]{task.fields[reward]:.3f}[/] · policy v{task.fields[version]}"
        ),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("routing", total=requests, reward=0.0, version=0)

        def update(done: int, reward: float, version: int) -> None:
            progress.update(task, completed=done, reward=reward, version=version)

        try:
            result = asyncio.run(run_demo(options, progress=update, status=progress.console.print))
        except (RuntimeError, ValueError) as exc:
            err.print(f"demo failed: {exc}", style="bold red")
            raise typer.Exit(1) from None
    summary = result["summary"]
    print_summary(summary)
    write(report, render(summary, result["timeline"], f"{scenario} scenario", _subtitle(summary)))
    console.print(f"report: {report}")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_bytes(orjson.dumps(_json(summary), option=orjson.OPT_INDENT_2))
        console.print(f"json: {json_path}")


def _subtitle(summary: dict[str, Any]) -> str:
    r2p = summary.get("reward_to_policy_s")
    r2p_text = f"{r2p:.1f} s" if r2p is not None else "n/a"
    return (
        f"{summary['requests']:,} requests in {summary['elapsed_s']:.0f} s; "
        f"{summary['policy_versions']} policy versions published; median reward-to-policy {r2p_text}"
    )


def print_summary(summary: dict[str, Any]) -> None:
    arms = Table(title="Arms")
    for column in ("arm", "traffic share", "requests", "mean reward [95% CI]"):
        arms.add_column(column, justify="right" if column != "arm" else "left")
    for name, row in summary["arms"].items():
        ci = row["ci95"]
        mean = (
            "n/a"
            if row["mean_reward"] is None
            else f"{row['mean_reward']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
        )
        arms.add_row(name, f"{row['share']:.1%}", f"{row['requests']:,}", mean)
    console.print(arms)
    compare = Table(title="Average reward on the same traffic")
    compare.add_column("policy")
    compare.add_column("average reward", justify="right")
    compare.add_row("banditgate", f"{summary['avg_reward']:.4f}", style="bold")
    compare.add_row("uniform A/B split", f"{summary['ab_reward']:.4f}")
    compare.add_row(f"best fixed arm ({summary['best_arm']})", f"{summary['best_arm_reward']:.4f}")
    compare.add_row("per-context oracle", f"{summary['oracle_reward']:.4f}")
    console.print(compare)
    console.print(_subtitle(summary))


def _json(summary: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "requests",
        "avg_reward",
        "ab_reward",
        "best_arm_reward",
        "oracle_reward",
        "policy_versions",
        "reward_to_policy_s",
    )
    out = {key: summary[key] for key in keys}
    out["arms"] = {
        name: {"share": row["share"], "mean_reward": row["mean_reward"]}
        for name, row in summary["arms"].items()
    }
    out["detail"] = {k: v for k, v in summary.items() if k not in out}
    return out
