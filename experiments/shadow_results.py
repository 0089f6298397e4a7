"""Tallies of shadow results: how each shadow arm compares with the primary it mirrors.

The router writes one result per mirrored request to the experiment's shadow stream
(router/shadow.py): the primary's and the shadow's status and latency, and whether
their bodies agree (when the spec's `shadow.compare_bodies` or `compare_pointer` asks).
The ledger feeds them here, in the same time buckets as decisions, so `/stats`, the
dashboard and `/metrics` show per shadow arm: agreement rate, errors on each side,
status disagreements and latency percentiles of both.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

# Latency histogram edges in milliseconds (the last bucket is everything above).
LATENCY_EDGES_MS = (
    1.0,
    2.5,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1000.0,
    2500.0,
    5000.0,
    10000.0,
    30000.0,
    60000.0,
)


def _histogram() -> list[int]:
    return [0] * (len(LATENCY_EDGES_MS) + 1)


@dataclass(slots=True)
class ShadowTally:
    """Sums for one shadow arm over some time; every field adds."""

    mirrored: int = 0
    compared: int = 0  # results that carry a body comparison
    agreed: int = 0
    status_differs: int = 0
    primary_errors: int = 0
    shadow_errors: int = 0
    primary_latency_ms: float = 0.0
    shadow_latency_ms: float = 0.0
    primary_histogram: list[int] = field(default_factory=_histogram)
    shadow_histogram: list[int] = field(default_factory=_histogram)

    def add(self, other: ShadowTally) -> None:
        for name in _SCALARS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for mine, theirs in (
            (self.primary_histogram, other.primary_histogram),
            (self.shadow_histogram, other.shadow_histogram),
        ):
            for i, count in enumerate(theirs):
                mine[i] += count

    def feed(self, result: dict[str, Any]) -> None:
        primary, shadow = result["primary"], result["shadow"]
        primary_ms = float(primary.get("latency_ms", 0.0))
        shadow_ms = float(shadow.get("latency_ms", 0.0))
        self.mirrored += 1
        if "same_body" in result:
            self.compared += 1
            self.agreed += bool(result["same_body"])
        if int(primary.get("status", 0)) != int(shadow.get("status", 0)):
            self.status_differs += 1
        self.primary_errors += failed(primary)
        self.shadow_errors += failed(shadow)
        self.primary_latency_ms += primary_ms
        self.shadow_latency_ms += shadow_ms
        self.primary_histogram[bisect.bisect_left(LATENCY_EDGES_MS, primary_ms)] += 1
        self.shadow_histogram[bisect.bisect_left(LATENCY_EDGES_MS, shadow_ms)] += 1


_SCALARS = [f.name for f in fields(ShadowTally) if not f.name.endswith("histogram")]


def failed(call: dict[str, Any]) -> bool:
    """No answer, or a server error (a 4xx is the model's answer to a bad request)."""
    status = int(call.get("status", 0))
    return "error" in call or status == 0 or status >= 500


def feed(tallies: dict[str, ShadowTally], results: Iterable[dict[str, Any]]) -> int:
    """Add results to per-shadow-arm tallies; returns how many were malformed and skipped."""
    skipped = 0
    for result in results:
        try:
            arm = str(result["shadow"]["arm"])
            tally = tallies.get(arm)
            if tally is None:
                tally = tallies[arm] = ShadowTally()
            tally.feed(result)
        except (KeyError, TypeError, ValueError):
            skipped += 1
    return skipped


def percentile(histogram: Sequence[int], q: float) -> float | None:
    """The q-quantile in ms, interpolated inside its histogram bucket; None when empty."""
    total = sum(histogram)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(histogram):
        if count and seen + count >= rank:
            low = LATENCY_EDGES_MS[i - 1] if i > 0 else 0.0
            high = LATENCY_EDGES_MS[i] if i < len(LATENCY_EDGES_MS) else LATENCY_EDGES_MS[-1]
            return low + (high - low) * max(0.0, rank - seen) / count
        seen += count
    return LATENCY_EDGES_MS[-1]


def summary(primary: str | None, tallies: dict[str, ShadowTally]) -> dict[str, Any]:
    """The `shadow` section of /stats: one entry per shadow arm."""
    arms = []
    for arm, t in sorted(tallies.items()):
        n = t.mirrored
        arms.append(
            {
                "arm": arm,
                "mirrored": n,
                "compared": t.compared,
                "agreement_rate": t.agreed / t.compared if t.compared else None,
                "status_differs": t.status_differs,
                "status_differs_rate": t.status_differs / n if n else None,
                "primary_error_rate": t.primary_errors / n if n else None,
                "shadow_error_rate": t.shadow_errors / n if n else None,
                "primary_latency_ms": {
                    "mean": t.primary_latency_ms / n if n else None,
                    "p50": percentile(t.primary_histogram, 0.5),
                    "p99": percentile(t.primary_histogram, 0.99),
                },
                "shadow_latency_ms": {
                    "mean": t.shadow_latency_ms / n if n else None,
                    "p50": percentile(t.shadow_histogram, 0.5),
                    "p99": percentile(t.shadow_histogram, 0.99),
                },
            }
        )
    return {"primary": primary, "arms": arms}
