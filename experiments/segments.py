"""Reward per arm broken down by one context feature (`GET /v1/experiments/{e}/segments`).

A bandit that wins on average may lose in a segment; this answers "how does each arm do
for `x-segment = mobile`?". It reads the newest joined examples of the window (each
carries its decision's featurized context), groups them by the value of one feature
and reports per segment and arm: examples, mean reward and the self-normalised IPS
value (randomised examples only, so a policy's preference does not bias it). Without
a feature it lists the features seen, most frequent first, for the dashboard's picker.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Annotated, Any, cast

import orjson
from fastapi import APIRouter, Query

from banditgate import keys
from banditgate.events import Joined, decode_joined
from banditgate.redis import Redis
from experiments.api import MAX_WINDOW_S, Name
from experiments.ledger import cyclic_gc_paused
from experiments.service import Service

MAX_EXAMPLES = 50_000
PAGE = 5_000
TOP_SEGMENTS = 20
OTHER = "(other)"
MISSING = "(none)"


@dataclass(slots=True)
class Cell:
    n: int = 0
    reward_sum: float = 0.0
    r_n: int = 0
    w: float = 0.0
    wr: float = 0.0

    def add(self, reward: float, p: float, randomised: bool) -> None:
        self.n += 1
        self.reward_sum += reward
        if randomised and p > 0:
            self.r_n += 1
            self.w += 1.0 / p
            self.wr += reward / p

    def merge(self, other: Cell) -> None:
        self.n += other.n
        self.reward_sum += other.reward_sum
        self.r_n += other.r_n
        self.w += other.w
        self.wr += other.wr

    def out(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "mean_reward": self.reward_sum / self.n if self.n else None,
            "randomized": self.r_n,
            "value": self.wr / self.w if self.w else None,
        }


async def newest_joined(redis: Redis, name: str, since_ms: int, limit: int) -> list[Joined]:
    """Joined examples from `since_ms` on, newest first, at most `limit`."""
    out: list[Joined] = []
    upper = "+"
    while len(out) < limit:
        entries = cast(
            list[tuple[bytes, dict[bytes, bytes]]],
            await redis.xrevrange(
                keys.joined(name), max=upper, min=str(since_ms), count=min(PAGE, limit - len(out))
            ),
        )
        if not entries:
            break
        with cyclic_gc_paused():
            for _, fields in entries:
                try:
                    out.append(decode_joined(fields))
                except (KeyError, ValueError, orjson.JSONDecodeError):
                    continue
        upper = f"({entries[-1][0].decode()}"
        if len(entries) < PAGE:
            break
    return out


def breakdown(examples: list[Joined], feature: str | None, arms: list[str]) -> dict[str, Any]:
    features: dict[str, int] = {}
    cells: dict[str, dict[str, Cell]] = {}
    for example in examples:
        d = example["decision"]
        context = d.get("context") or {}
        for key in context:
            features[key] = features.get(key, 0) + 1
        if feature is None:
            continue
        try:
            index = d["arms"].index(d["chosen"])
            p = float(d["pmf"][index])
        except (KeyError, ValueError, IndexError, TypeError):
            continue
        value = context.get(feature)
        segment = MISSING if value is None else str(value)
        row = cells.setdefault(segment, {})
        cell = row.get(d["chosen"])
        if cell is None:
            cell = row[d["chosen"]] = Cell()
        cell.add(float(example["reward"]), p, not d.get("forced"))
    ranked = sorted(cells.items(), key=lambda item: -sum(c.n for c in item[1].values()))
    kept, rest = ranked[:TOP_SEGMENTS], ranked[TOP_SEGMENTS:]
    if rest:
        other: dict[str, Cell] = {}
        for _, row in rest:
            for arm, cell in row.items():
                other.setdefault(arm, Cell()).merge(cell)
        kept.append((OTHER, other))
    names = list(arms) + sorted({a for _, row in kept for a in row} - set(arms))
    segments = []
    for segment, row in kept:
        per_arm = {arm: row[arm].out() for arm in names if arm in row}
        valued = {a: v["value"] for a, v in per_arm.items() if v["value"] is not None}
        segments.append(
            {
                "segment": segment,
                "n": sum(c.n for c in row.values()),
                "arms": per_arm,
                "best_arm": max(valued, key=lambda a: valued[a]) if valued else None,
            }
        )
    return {
        "features": [
            {"name": k, "examples": v} for k, v in sorted(features.items(), key=lambda i: -i[1])
        ],
        "segments": segments,
        "segments_total": len(ranked),
    }


def routes() -> APIRouter:
    router = APIRouter(prefix="/v1/experiments", tags=["stats"])

    @router.get("/{name}/segments")
    async def segments(
        name: Name,
        service: Service,
        feature: Annotated[
            str | None, Query(max_length=256, description="A context feature's name.")
        ] = None,
        window_s: Annotated[float, Query(gt=0, le=MAX_WINDOW_S)] = 3600.0,
        limit: Annotated[int, Query(ge=1, le=MAX_EXAMPLES)] = MAX_EXAMPLES,
    ) -> dict[str, Any]:
        """Per value of one context feature (top 20 by examples, the rest as `(other)`)
        and arm: joined examples, mean reward and IPS value; the features seen."""
        spec = await service.store.get(name)
        since_ms = int(time.time() * 1000 - window_s * 1000)
        examples = await newest_joined(service.redis, name, since_ms, limit)
        result = await asyncio.to_thread(breakdown, examples, feature, list(spec.arm_names))
        return {
            "experiment": name,
            "feature": feature,
            "window_s": window_s,
            "examples": len(examples),
            "truncated": len(examples) >= limit,
            **result,
        }

    return router
