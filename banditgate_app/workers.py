"""The background workers `banditgate workers` (and `serve`) run: names and their entry points."""

from __future__ import annotations

from collections.abc import Mapping

from banditgate.supervisor import Worker
from experiments import controller
from monitor import worker as monitor
from reward_ingest import export_worker
from reward_ingest import worker as joiner
from trainer import worker as trainer

WORKERS: Mapping[str, Worker] = {
    "joiner": joiner.run,
    "exporter": export_worker.run,
    "trainer": trainer.run,
    "controller": controller.run,
    "monitor": monitor.run,
}


def select(only: set[str] | None) -> dict[str, Worker]:
    unknown = sorted((only or set()) - set(WORKERS))
    if unknown:
        raise ValueError(f"unknown workers {unknown}; choose from {sorted(WORKERS)}")
    return {name: run for name, run in WORKERS.items() if only is None or name in only}
