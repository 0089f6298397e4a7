"""Feature profiles: per-feature statistics of a data set, and distances between two.

A profile is what SageMaker Model Monitor calls `statistics.json`: for each feature its
inferred type (Integral, Fractional, String), completeness, and either a numeric
summary with a distribution sketch (101 quantiles of up to `SAMPLE` values kept by
reservoir sampling: an exact KS distance on samples, bounded memory on any input) or
categorical frequencies (the most common `TOP` values, the rest as one "other").

Features come from JSON documents flattened to their leaves (`features.0`,
`user.tier`); a string leaf also yields its length (`len(features.0)`), so free text
(the reviews the demo classifiers read) has a numeric distribution that can drift.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SAMPLE = 10_000
TOP = 50
QUANTILES = np.linspace(0.0, 1.0, 101)
MAX_FEATURES = 500
MAX_DEPTH = 8
OTHER = "__other__"


def flatten(document: Any, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, Any]]:
    """(path, leaf value) pairs of a JSON document; lists index with their position."""
    if depth > MAX_DEPTH:
        return
    if isinstance(document, Mapping):
        for key, value in document.items():
            yield from flatten(value, f"{prefix}.{key}" if prefix else str(key), depth + 1)
    elif isinstance(document, list):
        for index, value in enumerate(document[:100]):
            yield from flatten(value, f"{prefix}.{index}" if prefix else str(index), depth + 1)
    else:
        yield prefix or "value", document


def features_of(document: Any) -> dict[str, Any]:
    """The features of one document: its leaves, plus the length of each string leaf."""
    out: dict[str, Any] = {}
    for path, value in flatten(document):
        out[path] = value
        if isinstance(value, str):
            out[f"len({path})"] = len(value)
    return out


@dataclass
class FeatureProfile:
    name: str
    count: int = 0  # documents seen while this feature was tracked
    present: int = 0
    numeric: int = 0
    integral: int = 0
    strings: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    low: float = math.inf
    high: float = -math.inf
    sample: list[float] = field(default_factory=list)
    seen_numbers: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, value: Any, rng: random.Random) -> None:
        self.present += 1
        if isinstance(value, bool):
            value = str(value).lower()
        if isinstance(value, int | float) and math.isfinite(value):
            number = float(value)
            self.numeric += 1
            self.integral += isinstance(value, int) or number.is_integer()
            self.total += number
            self.total_sq += number * number
            self.low = min(self.low, number)
            self.high = max(self.high, number)
            self.seen_numbers += 1
            if len(self.sample) < SAMPLE:
                self.sample.append(number)
            else:
                slot = rng.randrange(self.seen_numbers)
                if slot < SAMPLE:
                    self.sample[slot] = number
            return
        text = str(value)[:256]
        self.strings += 1
        if text in self.counts or len(self.counts) < 4 * TOP:
            self.counts[text] = self.counts.get(text, 0) + 1
        else:
            self.counts[OTHER] = self.counts.get(OTHER, 0) + 1

    @property
    def kind(self) -> str:
        if self.numeric and self.numeric >= self.strings:
            return "Integral" if self.integral == self.numeric else "Fractional"
        return "String"

    def statistics(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "inferred_type": self.kind,
            "completeness": self.present / self.count if self.count else 0.0,
            "num_present": self.present,
            "num_missing": self.count - self.present,
        }
        if self.kind != "String":
            sample = np.asarray(self.sample, dtype=np.float64)
            mean = self.total / self.numeric
            variance = max(self.total_sq / self.numeric - mean * mean, 0.0)
            out["numerical_statistics"] = {
                "mean": mean,
                "std_dev": math.sqrt(variance),
                "min": self.low,
                "max": self.high,
                "sum": self.total,
                "distribution": {
                    "sketch": {
                        "method": "reservoir",
                        "sample_size": len(self.sample),
                        "quantiles": np.quantile(sample, QUANTILES).tolist() if len(sample) else [],
                    }
                },
                "non_numeric": self.strings,
            }
        else:
            ranked = sorted(self.counts.items(), key=lambda item: -item[1])
            kept = dict(ranked[:TOP])
            rest = sum(count for _, count in ranked[TOP:])
            if rest:
                kept[OTHER] = kept.get(OTHER, 0) + rest
            out["string_statistics"] = {
                "distinct_count": len(self.counts),
                "distribution": {"categorical": {"buckets": kept}},
            }
        return out


class Profiler:
    """Accumulates feature profiles over documents; bounded in features and memory."""

    def __init__(self, seed: int = 0, only: Iterable[str] | None = None) -> None:
        self.rng = random.Random(seed)
        self.only = set(only) if only is not None else None
        self.features: dict[str, FeatureProfile] = {}
        self.documents = 0
        self.dropped_features = 0

    def add(self, document: Any) -> None:
        self.documents += 1
        for name, value in features_of(document).items():
            if self.only is not None and name not in self.only:
                continue
            profile = self.features.get(name)
            if value is None:  # null is a missing value, not the string "null"
                if profile is None and len(self.features) < MAX_FEATURES:
                    self.features[name] = FeatureProfile(name, count=self.documents - 1)
                continue
            if profile is None:
                if len(self.features) >= MAX_FEATURES:
                    self.dropped_features += 1
                    continue
                # A feature first seen late was missing from the documents before it.
                profile = self.features[name] = FeatureProfile(name, count=self.documents - 1)
            profile.add(value, self.rng)
        for profile in self.features.values():
            profile.count += 1

    def statistics(self) -> dict[str, Any]:
        return {
            "version": 0.0,
            "dataset": {"item_count": self.documents},
            "features": [self.features[name].statistics() for name in sorted(self.features)],
        }


def constraints(statistics: Mapping[str, Any], *, slack: float = 0.05) -> dict[str, Any]:
    """`constraints.json` from a baseline's statistics: type and completeness per feature,
    as Model Monitor suggests them (completeness may drop by `slack`)."""
    return {
        "version": 0.0,
        "features": [
            {
                "name": f["name"],
                "inferred_type": f["inferred_type"],
                "completeness": max(0.0, round(f["completeness"] - slack, 6)),
            }
            for f in statistics["features"]
        ],
    }


def numeric_distance(base: Mapping[str, Any], live: Mapping[str, Any]) -> float | None:
    """Kolmogorov-Smirnov distance between two quantile sketches (max CDF difference)."""
    a = np.asarray(base["numerical_statistics"]["distribution"]["sketch"]["quantiles"])
    b = np.asarray(live["numerical_statistics"]["distribution"]["sketch"]["quantiles"])
    if not len(a) or not len(b):
        return None
    grid = np.union1d(a, b)

    def cdf(q: np.ndarray) -> np.ndarray:
        # The share of the quantile grid at or below each point: an empirical CDF.
        return np.searchsorted(q, grid, side="right") / len(q)

    return float(np.max(np.abs(cdf(a) - cdf(b))))


def categorical_distance(base: Mapping[str, Any], live: Mapping[str, Any]) -> float | None:
    """L-infinity distance between two categorical frequency distributions."""
    a = base["string_statistics"]["distribution"]["categorical"]["buckets"]
    b = live["string_statistics"]["distribution"]["categorical"]["buckets"]
    total_a, total_b = sum(a.values()), sum(b.values())
    if not total_a or not total_b:
        return None
    return max(abs(a.get(k, 0) / total_a - b.get(k, 0) / total_b) for k in set(a) | set(b))


@dataclass(frozen=True)
class Thresholds:
    numeric: float = 0.1
    categorical: float = 0.1
    completeness: float = 0.05  # how far below the baseline's completeness is a violation


def violations(
    baseline: Mapping[str, Any],
    baseline_constraints: Mapping[str, Any],
    live: Mapping[str, Any],
    thresholds: Thresholds,
    features: Iterable[str] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Model Monitor's `constraint_violations.json` entries, and each feature's distance."""
    wanted = set(features) if features is not None else None
    base = {f["name"]: f for f in baseline["features"]}
    expected = {f["name"]: f for f in baseline_constraints["features"]}
    seen = {f["name"]: f for f in live["features"]}
    found: list[dict[str, Any]] = []
    distances: dict[str, float] = {}
    for name, constraint in sorted(expected.items()):
        if wanted is not None and name not in wanted:
            continue
        current = seen.get(name)
        if current is None or current["num_present"] == 0:
            found.append(
                {
                    "feature_name": name,
                    "constraint_check_type": "missing_column_check",
                    "description": f"{name} is in the baseline and missing from live traffic",
                }
            )
            continue
        if current["completeness"] < constraint["completeness"] - 1e-12:
            found.append(
                {
                    "feature_name": name,
                    "constraint_check_type": "completeness_check",
                    "description": f"completeness {current['completeness']:.4f} is below the "
                    f"baseline's {constraint['completeness']:.4f}",
                }
            )
        if current["inferred_type"] != constraint["inferred_type"] and {
            current["inferred_type"],
            constraint["inferred_type"],
        } != {"Integral", "Fractional"}:
            found.append(
                {
                    "feature_name": name,
                    "constraint_check_type": "data_type_check",
                    "description": f"type {current['inferred_type']}, baseline "
                    f"{constraint['inferred_type']}",
                }
            )
            continue
        reference = base[name]
        if "numerical_statistics" in reference and "numerical_statistics" in current:
            distance = numeric_distance(reference, current)
            limit, method = thresholds.numeric, "KS"
        elif "string_statistics" in reference and "string_statistics" in current:
            distance = categorical_distance(reference, current)
            limit, method = thresholds.categorical, "L-infinity"
        else:
            continue
        if distance is None:
            continue
        distances[name] = distance
        if distance > limit:
            found.append(
                {
                    "feature_name": name,
                    "constraint_check_type": "baseline_drift_check",
                    "description": f"{method} distance {distance:.4f} exceeds {limit}",
                }
            )
    for name in sorted(set(seen) - set(expected)):
        if wanted is not None and name not in wanted:
            continue
        found.append(
            {
                "feature_name": name,
                "constraint_check_type": "extra_column_check",
                "description": f"{name} is in live traffic and not in the baseline",
            }
        )
    return found, distances
