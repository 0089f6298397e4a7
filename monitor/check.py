"""Baselines from training data, and checks of captured traffic against them.

`baseline_from_file` profiles a Parquet, CSV or JSON-lines file (one request body per
line, or one example per row whose columns are the request's flattened feature paths:
`features.0`, `user.tier`) into Model Monitor-like `statistics.json` and
`constraints.json`. `check_arm` profiles an arm's captured requests (and, prefixed
`output.`, its responses) of a time window and lists the constraint violations and
each feature's distance from the baseline.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from banditgate.errors import InvalidInput
from monitor.profile import Profiler, Thresholds, constraints, violations

FORMATS = (".parquet", ".csv", ".jsonl", ".json", ".ndjson")


def rows_of_file(path: Path) -> Iterator[dict[str, Any]]:
    """Each row of a Parquet or CSV file as a dict, or each JSON line as it is."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise InvalidInput(
            f"{path.name}: a baseline is Parquet, CSV or JSON lines ({', '.join(FORMATS)})",
            field="from",
        )
    if suffix in (".jsonl", ".json", ".ndjson"):
        with path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    yield orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise InvalidInput(
                        f"{path.name} line {number} is not JSON: {exc}", field="from"
                    ) from None
        return
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path) if suffix == ".parquet" else pa_csv.read_csv(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidInput(f"{path.name} cannot be read: {exc}", field="from") from None
    for batch in table.to_batches(max_chunksize=10_000):
        yield from batch.to_pylist()


def baseline_from_file(path: Path, seed: int = 0) -> dict[str, Any]:
    profiler = Profiler(seed=seed)
    for row in rows_of_file(path):
        # Columns named like flattened paths ("features.0") stay as they are.
        profiler.add(row)
    if profiler.documents == 0:
        raise InvalidInput(f"{path.name} holds no rows", field="from")
    statistics = profiler.statistics()
    empty = [f["name"] for f in statistics["features"] if f["num_present"] == 0]
    return {
        "statistics": statistics,
        "constraints": constraints(statistics),
        "report": {
            "rows": profiler.documents,
            "features": len(statistics["features"]),
            "empty_features": empty,
            "mixed_type_features": [
                f["name"]
                for f in statistics["features"]
                if f.get("numerical_statistics", {}).get("non_numeric")
            ],
            "features_dropped": profiler.dropped_features,
        },
    }


def decode(payload: dict[str, Any]) -> Any:
    """A captured body as a document: JSON parsed, CSV as columns c0..cN, else None."""
    data = payload.get("data")
    encoding = payload.get("encoding")
    if not isinstance(data, str):
        return None
    if encoding == "JSON":
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
    if encoding == "CSV":
        first = data.splitlines()[0] if data else ""
        return {f"c{i}": _number(v) for i, v in enumerate(first.split(","))}
    if encoding == "BASE64":
        try:
            raw = base64.b64decode(data, validate=True)
        except binascii.Error:
            return None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
    return None


def _number(text: str) -> Any:
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        return text.strip()


@dataclass
class ArmCheck:
    arm: str
    records: int = 0
    undecodable: int = 0
    files: int = 0
    statistics: dict[str, Any] = field(default_factory=dict)
    violations: list[dict[str, Any]] = field(default_factory=list)
    distances: dict[str, float] = field(default_factory=dict)

    def summary(self, started: float, finished: float, window_s: float) -> dict[str, Any]:
        return {
            "arm": self.arm,
            "started_ms": int(started * 1000),
            "finished_ms": int(finished * 1000),
            "window_s": window_s,
            "records": self.records,
            "undecodable": self.undecodable,
            "files": self.files,
            "violations": self.violations,
            "distances": self.distances,
        }


def capture_files(root: Path, experiment: str, arm: str, since: float) -> list[Path]:
    """Capture files of one arm whose hour folder or write time falls after `since`."""
    folder = root / experiment / arm
    if not folder.is_dir():
        return []
    first_hour = datetime.fromtimestamp(since, UTC).strftime("%Y/%m/%d/%H")
    out = []
    for path in folder.glob("*/*/*/*/*.jsonl"):
        hour = "/".join(path.parent.parts[-4:])
        if hour >= first_hour:
            out.append(path)
    return sorted(out)


def check_arm(
    capture_root: Path,
    experiment: str,
    arm: str,
    baseline: dict[str, Any],
    *,
    window_s: float,
    thresholds: Thresholds,
    features: list[str] | None = None,
    now: float | None = None,
) -> ArmCheck:
    now = now if now is not None else time.time()
    since = now - window_s
    since_text = datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    result = ArmCheck(arm)
    profiler = Profiler(seed=0)
    for path in capture_files(capture_root, experiment, arm, since):
        result.files += 1
        with path.open("rb") as handle:
            for line in handle:
                try:
                    record = orjson.loads(line)
                    when = record["eventMetadata"]["inferenceTime"]
                    data = record["captureData"]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    result.undecodable += 1  # a line cut by a crash, or not ours
                    continue
                if when[:19] < since_text:
                    continue
                document: dict[str, Any] = {}
                request = data.get("endpointInput")
                if request is not None:
                    decoded = decode(request)
                    if decoded is None:
                        result.undecodable += 1
                        continue
                    document = decoded if isinstance(decoded, dict) else {"value": decoded}
                response = data.get("endpointOutput")
                if response is not None:
                    answer = decode(response)
                    if answer is not None:
                        document = {**document, "output": answer}
                profiler.add(document)
                result.records += 1
    result.statistics = profiler.statistics()
    if result.records:
        result.violations, result.distances = violations(
            baseline["statistics"], baseline["constraints"], result.statistics, thresholds, features
        )
    return result
