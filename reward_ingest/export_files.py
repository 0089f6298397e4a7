"""Export files: one Parquet file and one DSJSON file per open (experiment, date, hour) partition.

Layout under `{data_dir}/export/{experiment}/`:

    date=2025-01-31/hour=13/part-<ms>-<id>.parquet          Parquet, hive-partitioned
    _dsjson/date=2025-01-31/hour=13/part-<ms>-<id>.json     the same examples as DSJSON lines

DSJSON sits under `_dsjson/` (not `dsjson/`) because Parquet readers that open the
experiment directory as a dataset (pandas, pyarrow) skip names starting with `_` but would
try to read any other file below it as Parquet. Partitions follow the decision's server
time (UTC). An open file is written under a hidden name (`.part-...inprogress`) that no
reader lists, and renamed into place once complete.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from banditgate.events import Joined, chosen_probability
from reward_ingest.dsjson import dsjson_line

SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("experiment", pa.string()),
        ("ts_ms", pa.int64()),
        ("policy_version", pa.int64()),
        ("mode", pa.string()),
        ("arms", pa.list_(pa.string())),
        ("pmf", pa.list_(pa.float64())),
        ("chosen", pa.string()),
        ("chosen_prob", pa.float64()),
        ("forced", pa.bool_()),
        ("context", pa.string()),  # JSON: the features exactly as the policy saw them
        ("reward", pa.float64()),
        ("rewarded", pa.bool_()),
        ("n_rewards", pa.int64()),
        ("status", pa.int64()),
        ("latency_ms", pa.float64()),
        ("joined_ts_ms", pa.int64()),
        ("action_features", pa.string()),  # JSON, for decisions made on caller-given actions
    ]
)

IN_PROGRESS = ".inprogress"


def partition(ts_ms: int) -> tuple[str, str]:
    moment = dt.datetime.fromtimestamp(ts_ms / 1000, tz=dt.UTC)
    return moment.strftime("%Y-%m-%d"), moment.strftime("%H")


def row(joined: Joined) -> dict[str, Any]:
    decision = joined["decision"]
    action_features = decision.get("action_features")
    return {
        "event_id": decision["event_id"],
        "experiment": decision["experiment"],
        "ts_ms": decision["ts_ms"],
        "policy_version": decision["policy_version"],
        "mode": decision["mode"],
        "arms": decision["arms"],
        "pmf": decision["pmf"],
        "chosen": decision["chosen"],
        "chosen_prob": chosen_probability(decision),
        "forced": decision["forced"],
        "context": orjson.dumps(decision["context"]).decode(),
        "reward": joined["reward"],
        "rewarded": joined["rewarded"],
        "n_rewards": joined["n_rewards"],
        "status": decision.get("status"),
        "latency_ms": decision.get("latency_ms"),
        "joined_ts_ms": joined["joined_ts_ms"],
        "action_features": orjson.dumps(action_features).decode()
        if action_features is not None
        else None,
    }


@dataclass
class ExportFile:
    """A Parquet + DSJSON pair being written; blocking methods, call them off the event loop."""

    experiment: str
    root: Path  # {data_dir}/export/{experiment}
    date: str
    hour: str
    owner: str  # the exporter's tag, so a restarted exporter knows its leftovers
    row_group: int
    file_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    opened: float = field(default_factory=time.monotonic)
    message_ids: list[bytes] = field(default_factory=list)
    rows: int = 0
    parquet_path: Path = field(init=False)
    dsjson_path: Path = field(init=False)
    _buffer: list[dict[str, Any]] = field(default_factory=list)
    _writer: pq.ParquetWriter | None = None
    _lines: Any = None

    def __post_init__(self) -> None:
        name = f"part-{int(time.time() * 1000)}-{self.file_id}"
        hive = Path(f"date={self.date}") / f"hour={self.hour}"
        self.parquet_path = self.root / hive / f"{name}.parquet"
        self.dsjson_path = self.root / "_dsjson" / hive / f"{name}.json"

    def temporary(self, final: Path) -> Path:
        return final.with_name(f".{final.name}.{self.owner}{IN_PROGRESS}")

    @property
    def moves(self) -> list[tuple[Path, Path]]:
        return [
            (self.temporary(self.parquet_path), self.parquet_path),
            (self.temporary(self.dsjson_path), self.dsjson_path),
        ]

    def add(
        self, message_id: bytes, joined: Joined, arm_features: Mapping[str, Mapping[str, Any]]
    ) -> None:
        if self._lines is None:
            tmp = self.temporary(self.dsjson_path)
            tmp.parent.mkdir(parents=True, exist_ok=True)
            self._lines = open(tmp, "wb")  # noqa: SIM115 - kept open until close()
        self._lines.write(dsjson_line(joined, arm_features))
        self._buffer.append(row(joined))
        self.message_ids.append(message_id)
        self.rows += 1
        if len(self._buffer) >= self.row_group:
            self._write_buffer()

    def _write_buffer(self) -> None:
        if not self._buffer:
            return
        if self._writer is None:
            tmp = self.temporary(self.parquet_path)
            tmp.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(tmp, SCHEMA, compression="zstd")
        self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=SCHEMA))
        self._buffer.clear()

    def finish(self) -> None:
        """Everything on disk and synced, still under the hidden names."""
        self._write_buffer()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            _fsync(self.temporary(self.parquet_path))
        if self._lines is not None:
            self._lines.flush()
            os.fsync(self._lines.fileno())
            self._lines.close()
            self._lines = None

    def discard(self) -> None:
        for handle in (self._writer, self._lines):
            if handle is not None:
                handle.close()
        self._writer = self._lines = None
        for tmp, _ in self.moves:
            tmp.unlink(missing_ok=True)


def publish(moves: list[tuple[Path, Path]]) -> list[Path]:
    """Rename finished files into place (idempotent: a file already moved is left alone)."""
    done = []
    for tmp, final in moves:
        try:
            os.replace(tmp, final)
            _fsync(final.parent)
        except FileNotFoundError:  # moved already (by us before a crash, or by a peer's recovery)
            pass
        if final.exists():
            done.append(final)
    return done


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def leftovers(root: Path) -> list[Path]:
    """Hidden in-progress files under the export root."""
    return [path for path in root.rglob(f".part-*{IN_PROGRESS}") if path.is_file()]
