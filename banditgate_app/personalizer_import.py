"""`banditgate import personalizer`: the hosted Personalizer's logs and settings, in our layout.

Logs: the DSJSON lines Personalizer exported (one event a line: `c` with the context
namespaces and `_multi` with the actions' features, `a` the ranking as 1-based action
indexes, `p` their probabilities, `_labelIndex`, `_label_probability`, `_label_cost` the
negated reward). Each becomes one joined example in the export layout the exporter writes
(`{out}/date=.../hour=.../part-*.parquet` and the same examples as our DSJSON under
`_dsjson/`), so `banditgate train --from {out}` warm-starts from it with off-policy numbers
against the policy that logged the data: the logged probabilities are kept as they were.

Action ids: an action's `_tag` (or `_id`, `id`, `Id`) in `_multi`; a `--map` file renames
ids to arm names (`{"their-id": "arm"}`), and ids it does not name are kept as they are.
Events Personalizer marked `_skipLearn` (deferred, never activated) are skipped and counted;
any other malformed line refuses the whole import, naming the line and the reason.

Settings: `personalizer-config` turns the service configuration and policy JSON into a spec
(banditgate/personalizer.py maps each field), with one arm per action id (from `--actions`
or the logs), without backends: a rank-only experiment.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from banditgate.errors import InvalidInput
from banditgate.events import Joined
from banditgate.featurize import flatten
from banditgate.personalizer import apply_service_configuration, policy_arguments
from banditgate.spec import ARM_NAME_PATTERN, ExperimentSpec, parse_spec
from reward_ingest.dsjson import dsjson_line
from reward_ingest.export_files import SCHEMA, partition, row

ID_KEYS = ("_tag", "_id", "id", "Id")


@dataclass
class Imported:
    examples: list[Joined]
    arms: list[str]  # every arm name seen, in first-seen order
    skipped: int = 0
    files: list[Path] = field(default_factory=list)


def load_map(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    try:
        mapping = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise InvalidInput(f"{path}: not a readable JSON object: {exc}", field="map") from None
    if not isinstance(mapping, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in mapping.items()
    ):
        raise InvalidInput(f"{path}: a JSON object of action id -> arm name", field="map")
    return mapping


def _lines(path: Path) -> Iterator[tuple[str, Any]]:
    files = (
        sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl"))
        if path.is_dir()
        else [path]
    )
    if not files:
        raise InvalidInput(f"{path}: no .json or .jsonl files", field="logs")
    for file in files:
        with file.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                line = raw.strip()
                if not line:
                    continue
                where = f"{file.name} line {number}"
                try:
                    yield where, orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise InvalidInput(f"{where}: not JSON ({exc})", field="logs") from None


def _action_id(where: str, index: int, action: Any) -> tuple[str, dict[str, Any]]:
    if not isinstance(action, dict):
        raise InvalidInput(f"{where}: c._multi[{index}] is not an object", field="c._multi")
    for key in ID_KEYS:
        value = action.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            features: dict[str, Any] = {}
            flatten("", {k: v for k, v in action.items() if k != key}, features)
            return str(value), features
    raise InvalidInput(
        f"{where}: c._multi[{index}] has no action id ({' or '.join(ID_KEYS)})", field="c._multi"
    )


def _timestamp_ms(where: str, raw: Any) -> int:
    if not isinstance(raw, str):
        raise InvalidInput(f"{where}: Timestamp is missing", field="Timestamp")
    text = raw.rstrip("Z")
    if "." in text:
        head, fraction = text.split(".", 1)
        text = f"{head}.{fraction[:6]}"
    try:
        moment = dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)
    except ValueError:
        raise InvalidInput(
            f"{where}: Timestamp {raw!r} is not ISO 8601", field="Timestamp"
        ) from None
    return int(moment.timestamp() * 1000)


def convert(
    document: Any, where: str, experiment: str, mapping: Mapping[str, str]
) -> Joined | None:
    """One Personalizer DSJSON event as a joined example; None for a `_skipLearn` event."""
    if not isinstance(document, dict):
        raise InvalidInput(f"{where}: an event is a JSON object", field="logs")
    if document.get("_skipLearn") is True:
        return None
    missing = [
        k
        for k in ("EventId", "c", "a", "p", "_labelIndex", "_label_probability", "_label_cost")
        if k not in document
    ]
    if missing:
        raise InvalidInput(f"{where}: missing {missing}", field=missing[0])
    c = document["c"]
    if not isinstance(c, dict) or not isinstance(c.get("_multi"), list) or not c["_multi"]:
        raise InvalidInput(f"{where}: c._multi must list the actions", field="c._multi")
    arms: list[str] = []
    action_features: list[dict[str, Any]] = []
    for index, action in enumerate(c["_multi"]):
        action_id, features = _action_id(where, index, action)
        name = mapping.get(action_id, action_id)
        if name in arms:
            raise InvalidInput(f"{where}: action {name!r} appears twice", field="c._multi")
        arms.append(name)
        action_features.append(features)
    order, probabilities = document["a"], document["p"]
    if (
        not isinstance(order, list)
        or not isinstance(probabilities, list)
        or len(order) != len(arms)
        or len(probabilities) != len(arms)
        or sorted(order) != list(range(1, len(arms) + 1))
    ):
        raise InvalidInput(
            f"{where}: a and p must rank every one of the {len(arms)} actions once", field="a"
        )
    pmf = [0.0] * len(arms)
    for action, probability in zip(order, probabilities, strict=True):
        if not isinstance(probability, int | float) or not 0 <= probability <= 1:
            raise InvalidInput(f"{where}: p holds {probability!r}, not a probability", field="p")
        pmf[action - 1] = float(probability)
    chosen = document["_labelIndex"]
    if isinstance(chosen, bool) or not isinstance(chosen, int) or not 0 <= chosen < len(arms):
        raise InvalidInput(f"{where}: _labelIndex {chosen!r} is not an action", field="_labelIndex")
    logged = document["_label_probability"]
    if not isinstance(logged, int | float) or not 0 < logged <= 1:
        raise InvalidInput(
            f"{where}: _label_probability {logged!r} is outside (0, 1]", field="_label_probability"
        )
    if not math.isclose(pmf[chosen], float(logged), abs_tol=1e-4):
        raise InvalidInput(
            f"{where}: _label_probability {logged} differs from the chosen action's p "
            f"{pmf[chosen]}",
            field="_label_probability",
        )
    cost = document["_label_cost"]
    if isinstance(cost, bool) or not isinstance(cost, int | float) or not math.isfinite(cost):
        raise InvalidInput(f"{where}: _label_cost {cost!r} is not a number", field="_label_cost")
    event_id = document["EventId"]
    if not isinstance(event_id, str) or not event_id:
        raise InvalidInput(f"{where}: EventId is not a string", field="EventId")
    context: dict[str, Any] = {}
    flatten("", {k: v for k, v in c.items() if not k.startswith("_")}, context)
    ts_ms = _timestamp_ms(where, document.get("Timestamp"))
    outcomes = document.get("o")
    rewarded = isinstance(outcomes, list) and bool(outcomes)
    return {
        "decision": {
            "event_id": event_id,
            "experiment": experiment,
            "ts_ms": ts_ms,
            "policy_version": 0,
            "mode": "bandit",
            "context": context,
            "arms": arms,
            "pmf": pmf,
            "chosen": arms[chosen],
            "forced": False,
            "status": 200,
            "latency_ms": 0.0,
            "action_features": action_features,
        },
        "reward": -float(cost),
        "rewarded": rewarded,
        "n_rewards": len(outcomes) if isinstance(outcomes, list) else 0,
        "joined_ts_ms": ts_ms,
    }


def read_logs(path: Path, experiment: str, mapping: Mapping[str, str]) -> Imported:
    """Every event checked before anything is written."""
    if not path.exists():
        raise InvalidInput(f"{path}: no such file or directory", field="logs")
    result = Imported([], [])
    seen: set[str] = set()
    for where, document in _lines(path):
        joined = convert(document, where, experiment, mapping)
        if joined is None:
            result.skipped += 1
            continue
        for arm in joined["decision"]["arms"]:
            if arm not in seen:
                seen.add(arm)
                result.arms.append(arm)
        result.examples.append(joined)
    if not result.examples:
        raise InvalidInput(f"{path}: no event to import", field="logs")
    return result


def write_export(imported: Imported, out: Path) -> list[Path]:
    """The examples as the exporter lays them out: Parquet and DSJSON per date and hour."""
    by_partition: dict[tuple[str, str], list[Joined]] = {}
    for joined in imported.examples:
        by_partition.setdefault(partition(joined["decision"]["ts_ms"]), []).append(joined)
    written: list[Path] = []
    for (date, hour), examples in sorted(by_partition.items()):
        hive = Path(f"date={date}") / f"hour={hour}"
        parquet = out / hive / "part-personalizer-import.parquet"
        dsjson = out / "_dsjson" / hive / "part-personalizer-import.json"
        parquet.parent.mkdir(parents=True, exist_ok=True)
        dsjson.parent.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist([row(j) for j in examples], schema=SCHEMA)
        pq.write_table(table, parquet)
        dsjson.write_bytes(b"".join(dsjson_line(j, {}) for j in examples))
        written += [parquet, dsjson]
    imported.files = written
    return written


def spec_from_config(
    name: str,
    service: Any,
    policy: Any,
    actions: list[str],
) -> ExperimentSpec:
    """A rank-only spec from Personalizer's service configuration and policy JSON."""
    import re

    pattern = re.compile(ARM_NAME_PATTERN)
    for action in actions:
        if not pattern.match(action):
            raise InvalidInput(
                f"action {action!r} cannot be an arm name ({ARM_NAME_PATTERN}); "
                "rename it with --map",
                field="actions",
            )
    if not actions:
        raise InvalidInput("no actions: give --actions or --logs", field="actions")
    document: dict[str, Any] = {
        "name": name,
        "mode": "bandit",
        "arms": [{"name": action} for action in actions],
        "description": "imported from a Personalizer configuration",
    }
    if service is not None:
        document, _ = apply_service_configuration(document, _known_service(service))
    if policy is not None:
        if not isinstance(policy, dict):
            raise InvalidInput("the policy is {name, arguments}", field="policy")
        document["policy"] = policy_arguments(policy.get("arguments"), document.get("policy", {}))
    policy_section = document.setdefault("policy", {})
    share = policy_section.get("min_arm_share", 0.01)
    if share * len(actions) > 1:
        policy_section["min_arm_share"] = 0.0
    return parse_spec(document)


def _known_service(service: Any) -> Any:
    """Settings the hosted service reported that mean nothing here are left out of the spec."""
    if not isinstance(service, dict):
        return service
    skip = {"lastConfigurationEditDate", "latestApprenticeModeMetrics", "logMirrorSasUri"}
    return {k: v for k, v in service.items() if k not in skip}
