"""The world suite, in process: banditgate's learning loop against reference policies.

    nice -n 10 .venv/bin/python -m bench.worlds [--worlds k5-gap03 tier3x3 ...] [--seeds 20]
        [--candidate 'label={"exploration": {"type": "cover"}}' ...] [--json out.json]

Without --candidate the spec's default policy runs (label `default`). Prints one
Markdown table per world: mean and worst seed of each metric.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.worlds.library import WORLDS
from bench.worlds.report import table
from bench.worlds.runner import Candidate, run_world


def _candidate(raw: str) -> Candidate:
    label, _, policy = raw.partition("=")
    if not policy:
        return raw, {}
    return label, orjson.loads(policy)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worlds", nargs="+", default=list(WORLDS), choices=list(WORLDS))
    parser.add_argument("--seeds", type=int, default=20, help="seeds 0..N-1")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--candidate", action="append", default=None)
    parser.add_argument("--requests", type=int, default=None, help="override every world's")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    candidates = [_candidate(c) for c in args.candidate] if args.candidate else [("default", {})]
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    reports: list[dict[str, Any]] = []
    for name in args.worlds:
        world = WORLDS[name]
        if args.requests is not None:
            from dataclasses import replace

            world = replace(world, requests=args.requests)
        started = time.monotonic()
        report = run_world(world, seeds, candidates)
        reports.append(report)
        print(table(report), flush=True)
        print(f"({time.monotonic() - started:.0f} s)\n", flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps(reports, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
