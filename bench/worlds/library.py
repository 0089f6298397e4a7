"""Traffic worlds: who asks what, and what each arm earns for it, request by request.

A world is fixed (its reward tables come from a fixed generator); a seed draws the
traffic: which segment asks, the request's body and headers, each arm's potential
reward, the reward's delay and whether it ever arrives. Every policy of a run sees
the same traffic and the same potential rewards.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Table = dict[str, dict[str, float]]  # segment -> arm -> expected reward
Means = Callable[[int], Table]  # request index -> table (only the arms serving then)


@dataclass(frozen=True)
class Request:
    body: dict[str, Any] | None
    headers: dict[str, str]


@dataclass(frozen=True)
class World:
    name: str
    description: str
    arms: tuple[str, ...]  # every arm that ever serves, in spec order
    context: dict[str, Any]  # the spec's context section
    segments: tuple[str, ...]
    request: Callable[[random.Random, str], Request]
    means: Means
    requests: int = 8_000
    continuous: bool = False  # rewards Beta-distributed in [0, 1] rather than 0/1
    delay: tuple[int, int] = (20, 400)  # reward delay, in requests
    window: int = 2_000  # a reward that never arrives joins (as the default) this late
    missing: float = 0.0  # share of rewards that never arrive
    default_reward: float = 0.0
    change_at: int | None = None  # where the best arm changes (for recovery)
    weights: tuple[float, ...] | None = None  # segment frequencies (None: equal)
    tags: frozenset[str] = field(default_factory=frozenset)

    @property
    def stationary(self) -> bool:
        return "stationary" in self.tags

    def min_gap(self) -> float:
        """The smallest gap between the best and second-best arm over segments and time."""
        gaps = []
        for t in (0, self.requests - 1):
            for values in self.means(t).values():
                ranked = sorted(values.values(), reverse=True)
                if len(ranked) > 1:
                    gaps.append(ranked[0] - ranked[1])
        return min(gaps) if gaps else 0.0


def _constant(table: Table) -> Means:
    return lambda t: table


def _switch(before: Table, after: Table, at: int) -> Means:
    return lambda t: before if t < at else after


def _drift(before: Table, after: Table, start: int, end: int) -> Means:
    def means(t: int) -> Table:
        if t <= start:
            return before
        if t >= end:
            return after
        w = (t - start) / (end - start)
        return {s: {a: (1 - w) * before[s][a] + w * after[s][a] for a in after[s]} for s in after}

    return means


def _no_context(rng: random.Random, segment: str) -> Request:
    return Request({"inputs": [1]}, {})


def _tier(rng: random.Random, segment: str) -> Request:
    return Request({"user": {"tier": segment}, "inputs": [rng.random()]}, {})


def _header(rng: random.Random, segment: str) -> Request:
    return Request({"inputs": [1]}, {"x-segment": segment})


def _pair(rng: random.Random, segment: str) -> Request:
    tier, region = segment.split("/")
    return Request({"user": {"tier": tier}, "region": region}, {})


def _noisy_tier(rng: random.Random, segment: str) -> Request:
    # An irrelevant feature with many values next to the one that matters.
    return Request({"user": {"tier": segment}, "session": f"s{rng.randrange(200)}"}, {})


_WORDS = {
    "pos": ["great", "love", "excellent", "perfect"],
    "neg": ["terrible", "broken", "refund", "awful"],
    "neutral": ["okay", "arrived", "box", "fine"],
}
_FILLER = "the delivery came on tuesday and we set it up in the kitchen after dinner".split()


def _review(rng: random.Random, segment: str) -> Request:
    length, mood = segment.split("-")
    n = rng.randint(2, 4) if length == "short" else rng.randint(45, 70)
    words = [rng.choice(_FILLER) for _ in range(n)] + [rng.choice(_WORDS[mood])]
    rng.shuffle(words)
    return Request({"review": " ".join(words)}, {})


def _same(values: dict[str, float], segments: tuple[str, ...]) -> Table:
    return {s: dict(values) for s in segments}


def _arms(k: int) -> tuple[str, ...]:
    return tuple(f"m{i}" for i in range(1, k + 1))


def _random_table(segments: tuple[str, ...], arms: tuple[str, ...], gap: float, seed: int) -> Table:
    """A best arm per segment (drawn), `gap` above the others, whose rates vary by segment."""
    rng = random.Random(seed)
    table: Table = {}
    for s in segments:
        best = rng.choice(arms)
        base = rng.uniform(0.2, 0.6)
        table[s] = {
            a: round(base + gap if a == best else base - rng.uniform(0, 0.1), 4) for a in arms
        }
    return table


NO_CONTEXT: dict[str, Any] = {}
TIER = {"body": ["user.tier"]}
ONE = ("all",)
TIER_TABLE: Table = {
    "free": {"m1": 0.60, "m2": 0.50, "m3": 0.45},
    "pro": {"m1": 0.45, "m2": 0.62, "m3": 0.50},
    "team": {"m1": 0.40, "m2": 0.48, "m3": 0.58},
}


def build() -> dict[str, World]:
    worlds: list[World] = []
    stationary = frozenset({"stationary"})
    change = frozenset({"change"})

    k2 = _arms(2)
    worlds.append(
        World(
            "k2-gap10",
            "2 arms 0.50 / 0.40, no context (the demo's seed scenario, Bernoulli)",
            k2,
            NO_CONTEXT,
            ONE,
            _no_context,
            _constant(_same({"m1": 0.40, "m2": 0.50}, ONE)),
            tags=stationary,
        )
    )
    k5 = _arms(5)
    worlds.append(
        World(
            "k5-gap03",
            "5 arms 0.50 down to 0.38 in steps of 0.03, no context (issue 11's lock-in)",
            k5,
            NO_CONTEXT,
            ONE,
            _no_context,
            _constant(_same({"m1": 0.44, "m2": 0.47, "m3": 0.50, "m4": 0.41, "m5": 0.38}, ONE)),
            tags=stationary,
        )
    )
    k10 = _arms(10)
    worlds.append(
        World(
            "k10-gap02",
            "10 arms 0.40 down to 0.22 in steps of 0.02, no context",
            k10,
            NO_CONTEXT,
            ONE,
            _no_context,
            _constant(_same({a: round(0.22 + 0.02 * i, 2) for i, a in enumerate(k10)}, ONE)),
            tags=stationary,
        )
    )
    k3 = _arms(3)
    worlds.append(
        World(
            "k3-gap01-cont",
            "3 arms, continuous rewards with means 0.60 / 0.59 / 0.50 (gap 0.01), no context",
            k3,
            NO_CONTEXT,
            ONE,
            _no_context,
            _constant(_same({"m1": 0.59, "m2": 0.50, "m3": 0.60}, ONE)),
            continuous=True,
            tags=stationary,
        )
    )
    k4 = _arms(4)
    worlds.append(
        World(
            "k4-gap20-cont",
            "4 arms, continuous rewards with means 0.70 / 0.50 / 0.45 / 0.40, no context",
            k4,
            NO_CONTEXT,
            ONE,
            _no_context,
            _constant(_same({"m1": 0.45, "m2": 0.70, "m3": 0.40, "m4": 0.50}, ONE)),
            continuous=True,
            tags=stationary,
        )
    )
    tiers = ("free", "pro", "team")
    worlds.append(
        World(
            "tier3x3",
            "3 arms x 3 segments (user.tier in the body), a different best arm per segment",
            k3,
            TIER,
            tiers,
            _tier,
            _constant(TIER_TABLE),
            tags=stationary,
        )
    )
    header_segments = tuple(f"seg{i}" for i in range(5))
    worlds.append(
        World(
            "header5x4",
            "4 arms x 5 segments from the x-segment header, gap 0.08, uneven segment sizes",
            k4,
            {"headers": ["x-segment"]},
            header_segments,
            _header,
            _constant(_random_table(header_segments, k4, 0.08, seed=5)),
            weights=(0.4, 0.25, 0.15, 0.12, 0.08),
            tags=stationary,
        )
    )
    cells = tuple(f"{length}-{mood}" for length in ("short", "long") for mood in _WORDS)
    worlds.append(
        World(
            "text6x3",
            "3 arms x 6 review kinds read by the text featurizer (length x sentiment), gap 0.1",
            k3,
            {"text": "review"},
            cells,
            _review,
            _constant(_random_table(cells, k3, 0.10, seed=6)),
            tags=stationary,
        )
    )
    many = tuple(f"s{i:02d}" for i in range(50))
    worlds.append(
        World(
            "seg50x5",
            "5 arms x 50 segments (user.tier), a drawn best arm per segment, gap 0.1",
            k5,
            TIER,
            many,
            _tier,
            _constant(_random_table(many, k5, 0.10, seed=50)),
            tags=stationary,
        )
    )
    pairs = tuple(f"{t}/{r}" for t in ("free", "pro") for r in ("eu", "us"))
    worlds.append(
        World(
            "xor2x2",
            "2 arms; the best depends on tier AND region (an interaction: free/eu and pro/us "
            "favour m1, the others m2), gap 0.15",
            k2,
            {"body": ["user.tier", "region"]},
            pairs,
            _pair,
            _constant(
                {
                    "free/eu": {"m1": 0.60, "m2": 0.45},
                    "free/us": {"m1": 0.45, "m2": 0.60},
                    "pro/eu": {"m1": 0.40, "m2": 0.55},
                    "pro/us": {"m1": 0.55, "m2": 0.40},
                }
            ),
            tags=stationary,
        )
    )
    worlds.append(
        World(
            "noisy-tier3x3",
            "tier3x3 plus an irrelevant body field with 200 values (session)",
            k3,
            {"body": ["user.tier", "session"]},
            tiers,
            _noisy_tier,
            _constant(TIER_TABLE),
            tags=stationary,
        )
    )
    worlds.append(
        World(
            "delayed-missing",
            "3 arms 0.50 / 0.45 / 0.40; rewards up to 2,000 requests late, 30% never arrive "
            "(joined with the default 0)",
            k3,
            NO_CONTEXT,
            ONE,
            _no_context,
            _constant(_same({"m1": 0.45, "m2": 0.40, "m3": 0.50}, ONE)),
            delay=(50, 2_000),
            missing=0.3,
            tags=stationary,
        )
    )
    worlds.append(
        World(
            "change-degrade",
            "2 arms: the best (0.55) drops to 0.35 after 4,000 requests, the other stays 0.45",
            k2,
            NO_CONTEXT,
            ONE,
            _no_context,
            _switch(
                _same({"m1": 0.55, "m2": 0.45}, ONE), _same({"m1": 0.35, "m2": 0.45}, ONE), 4_000
            ),
            change_at=4_000,
            tags=change,
        )
    )
    worlds.append(
        World(
            "change-improve",
            "3 arms 0.50 / 0.45 / 0.40; after 4,000 requests the worst rises to 0.65",
            k3,
            NO_CONTEXT,
            ONE,
            _no_context,
            _switch(
                _same({"m1": 0.50, "m2": 0.45, "m3": 0.40}, ONE),
                _same({"m1": 0.50, "m2": 0.45, "m3": 0.65}, ONE),
                4_000,
            ),
            change_at=4_000,
            tags=change,
        )
    )
    worlds.append(
        World(
            "change-tier",
            "tier3x3, then after 4,000 requests the best arm of `free` drops by 0.25",
            k3,
            TIER,
            tiers,
            _tier,
            _switch(
                TIER_TABLE,
                {**TIER_TABLE, "free": {"m1": 0.35, "m2": 0.50, "m3": 0.45}},
                4_000,
            ),
            change_at=4_000,
            tags=change,
        )
    )
    worlds.append(
        World(
            "drift",
            "2 arms cross gradually: 0.55 / 0.45 at request 3,000 to 0.40 / 0.55 at 5,000",
            k2,
            NO_CONTEXT,
            ONE,
            _no_context,
            _drift(
                _same({"m1": 0.55, "m2": 0.45}, ONE),
                _same({"m1": 0.40, "m2": 0.55}, ONE),
                3_000,
                5_000,
            ),
            change_at=4_000,  # where they cross (0.475 / 0.50 just after)
            tags=change,
        )
    )
    worlds.append(
        World(
            "arm-added",
            "2 arms 0.50 / 0.45; a third arm (0.60) is added after 3,000 requests",
            k3,
            NO_CONTEXT,
            ONE,
            _no_context,
            _switch(
                _same({"m1": 0.50, "m2": 0.45}, ONE),
                _same({"m1": 0.50, "m2": 0.45, "m3": 0.60}, ONE),
                3_000,
            ),
            change_at=3_000,
            tags=change,
        )
    )
    worlds.append(
        World(
            "arm-removed",
            "3 arms 0.55 / 0.50 / 0.40; the best is removed after 4,000 requests",
            k3,
            NO_CONTEXT,
            ONE,
            _no_context,
            _switch(
                _same({"m1": 0.55, "m2": 0.40, "m3": 0.50}, ONE),
                _same({"m2": 0.40, "m3": 0.50}, ONE),
                4_000,
            ),
            change_at=4_000,
            tags=change,
        )
    )
    return {w.name: w for w in worlds}


WORLDS = build()
