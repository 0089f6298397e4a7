"""What every command shares: the consoles, failing with a message, reading specs, a Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NoReturn, TypeVar

import typer
from rich.console import Console

from banditgate.errors import BanditgateError, InvalidSpec
from banditgate.process import redis_url
from banditgate.redis import Redis, connect
from banditgate.settings import CoreSettings
from banditgate.spec import ExperimentSpec, load_specs

T = TypeVar("T")

console = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
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


def with_redis(fn: Callable[[Redis], Awaitable[T]]) -> T:
    """Run `fn(redis)` against the configured Redis (or an embedded one)."""

    async def runner(url: str) -> T:
        redis = connect(url)
        try:
            return await fn(redis)
        finally:
            await redis.aclose()

    with redis_url(CoreSettings()) as url:
        try:
            return asyncio.run(runner(url))
        except BanditgateError as exc:
            fail(exc.message)
