"""Model quality per arm: captured predictions merged with ground-truth labels.

Labels arrive later than the predictions (`POST /v1/ground-truth`, kept in the
experiment's ground-truth stream). For each arm, the capture files of the window give
each event id's prediction (the spec's `quality.prediction` pointer into the arm's
answer); the labels of the same events give the truth. Classification reports
accuracy (with a Wilson interval) and macro precision, recall and F1; regression
MAE (with a normal interval) and RMSE. Each report also scores the window before it,
and raises an alert when accuracy fell (or MAE rose) by more than `alert_drop` with
enough labels on both sides.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import orjson

from banditgate import keys
from banditgate.intervals import wilson_interval
from banditgate.pointers import resolve
from banditgate.redis import Redis, stream_id_ms
from banditgate.spec import QualitySpec
from monitor.check import capture_files, decode

Z95 = 1.959964
MAX_LABELS = 2_000_000


async def read_labels(redis: Redis, experiment: str, since_ms: int) -> dict[str, tuple[Any, int]]:
    """event id -> (label, posted ms), newest label wins, from `since_ms` on."""
    labels: dict[str, tuple[Any, int]] = {}
    start = str(since_ms)
    while len(labels) < MAX_LABELS:
        entries = cast(
            list[tuple[bytes, dict[bytes, bytes]]],
            await redis.xrange(keys.ground_truth(experiment), min=start, count=10_000),
        )
        if not entries:
            break
        for entry_id, fields in entries:
            try:
                labels[fields[b"e"].decode()] = (orjson.loads(fields[b"l"]), stream_id_ms(entry_id))
            except (KeyError, UnicodeDecodeError, orjson.JSONDecodeError):
                continue
        start = f"({entries[-1][0].decode()}"
        if len(entries) < 10_000:
            break
    return labels


def predictions(
    capture_root: Path, experiment: str, arm: str, pointer: str, since: float
) -> dict[str, tuple[Any, str]]:
    """event id -> (prediction, inference time) from an arm's capture files."""
    out: dict[str, tuple[Any, str]] = {}
    for path in capture_files(capture_root, experiment, arm, since):
        with path.open("rb") as handle:
            for line in handle:
                try:
                    record = orjson.loads(line)
                    meta = record["eventMetadata"]
                    answer = decode(record["captureData"]["endpointOutput"])
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    continue
                value = resolve(answer, pointer) if answer is not None else None
                if value is not None:
                    out[str(meta["eventId"])] = (value, str(meta["inferenceTime"]))
    return out


@dataclass
class Score:
    n: int = 0
    pairs: list[tuple[Any, Any]] = field(default_factory=list)  # (truth, prediction)

    def classification(self) -> dict[str, Any]:
        n = len(self.pairs)
        if n == 0:
            return {"n": 0}
        correct = sum(1 for truth, guess in self.pairs if _same(truth, guess))
        classes = sorted({str(t) for t, _ in self.pairs} | {str(p) for _, p in self.pairs})
        precisions, recalls, f1s = [], [], []
        for c in classes:
            tp = sum(1 for t, p in self.pairs if str(t) == c and str(p) == c)
            fp = sum(1 for t, p in self.pairs if str(t) != c and str(p) == c)
            fn = sum(1 for t, p in self.pairs if str(t) == c and str(p) != c)
            precision = tp / (tp + fp) if tp + fp else 0.0
            recall = tp / (tp + fn) if tp + fn else 0.0
            precisions.append(precision)
            recalls.append(recall)
            f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
        accuracy = correct / n
        return {
            "n": n,
            "accuracy": accuracy,
            "accuracy_ci": wilson(correct, n),
            "precision": sum(precisions) / len(classes),
            "recall": sum(recalls) / len(classes),
            "f1": sum(f1s) / len(classes),
            "classes": len(classes),
        }

    def regression(self) -> dict[str, Any]:
        errors = []
        for truth, guess in self.pairs:
            try:
                errors.append(float(guess) - float(truth))
            except (TypeError, ValueError):
                continue
        n = len(errors)
        if n == 0:
            return {"n": 0}
        absolute = [abs(e) for e in errors]
        mae = sum(absolute) / n
        spread = math.sqrt(sum((a - mae) ** 2 for a in absolute) / (n - 1)) if n > 1 else 0.0
        half = Z95 * spread / math.sqrt(n)
        return {
            "n": n,
            "mae": mae,
            "mae_ci": [max(0.0, mae - half), mae + half],
            "rmse": math.sqrt(sum(e * e for e in errors) / n),
        }


def _same(truth: Any, guess: Any) -> bool:
    if truth == guess:
        return True
    try:
        return float(truth) == float(guess)
    except (TypeError, ValueError):
        return str(truth) == str(guess)


def wilson(successes: int, n: int) -> list[float]:
    return list(wilson_interval(successes, n))


def score(
    spec: QualitySpec,
    labels: dict[str, tuple[Any, int]],
    predicted: dict[str, tuple[Any, str]],
    windows: Iterable[tuple[str, str]],
) -> list[dict[str, Any]]:
    """A score per window [start, end) of inference times (ISO strings, UTC)."""
    out = []
    for start, end in windows:
        s = Score()
        for event_id, (guess, when) in predicted.items():
            if not start <= when[:19] < end:
                continue
            labelled = labels.get(event_id)
            if labelled is not None:
                s.pairs.append((labelled[0], guess))
        out.append(s.classification() if spec.problem == "classification" else s.regression())
    return out


def alert(spec: QualitySpec, current: dict[str, Any], previous: dict[str, Any]) -> str | None:
    if current["n"] < spec.min_labels or previous["n"] < spec.min_labels:
        return None
    if spec.problem == "classification":
        drop = previous["accuracy"] - current["accuracy"]
        if drop > spec.alert_drop:
            return (
                f"accuracy fell from {previous['accuracy']:.3f} ({previous['n']} labels) to "
                f"{current['accuracy']:.3f} ({current['n']})"
            )
        return None
    rise = current["mae"] - previous["mae"]
    if rise > spec.alert_drop:
        return (
            f"MAE rose from {previous['mae']:.4g} ({previous['n']} labels) to "
            f"{current['mae']:.4g} ({current['n']})"
        )
    return None
