"""A first policy from historical logs: Parquet exports or VW DSJSON lines.

Every row is checked before anything is learned; a bad file is refused with the
row and the reason. While learning, each row is scored before it is learned from
(progressive validation), so the result comes with IPS/SNIPS/DR estimates of the
new policy against the policy that logged the data.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import vowpalwabbit

from banditgate.auto import AUTO, concrete
from banditgate.errors import InvalidInput
from banditgate.events import Joined
from banditgate.policy import apply_floor, vw_arguments, workspace_to_bytes
from banditgate.spec import ExperimentSpec
from trainer.gate import EvaluationWindow
from trainer.learner import Learner, expected, new_learner, reward_model_arguments, to_example

PARQUET_COLUMNS = ("arms", "pmf", "chosen", "context", "reward")


@dataclass
class WarmStart:
    model: bytes
    examples: int
    numbers: dict[str, Any]


def _files(path: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in suffixes)
    return [path]


def _is_dsjson(path: Path) -> bool:
    files = _files(path, (".json", ".jsonl", ".dsjson", ".parquet"))
    return bool(files) and files[0].suffix in (".json", ".jsonl", ".dsjson")


def train_from(path: Path, spec: ExperimentSpec) -> WarmStart:
    if not path.exists():
        raise InvalidInput(f"{path}: no such file or directory", field="from")
    if spec.policy.learner == "static":
        raise InvalidInput("the static learner does not learn", field="policy.learner")
    if spec.policy.learner == AUTO:
        spec = concrete(spec, "vw")  # the candidate that learns from logs of another policy
    if _is_dsjson(path):
        if spec.policy.learner != "vw":
            raise InvalidInput("DSJSON warm start trains the vw learner", field="policy.learner")
        return _from_dsjson(path, spec)
    return _from_parquet(path, spec)


def _parquet_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow.dataset as ds  # the CLI imports this module; Parquet only on a warm start

    try:
        dataset = ds.dataset(str(path), format="parquet", partitioning="hive")
    except Exception as exc:
        raise InvalidInput(f"{path}: not readable as Parquet: {exc}", field="from") from None
    missing = [c for c in PARQUET_COLUMNS if c not in dataset.schema.names]
    if missing:
        raise InvalidInput(
            f"{path}: missing columns {missing}; need {list(PARQUET_COLUMNS)}", field="from"
        )
    row = 0
    for batch in dataset.to_batches():
        for record in batch.to_pylist():
            yield f"row {row}", record
            row += 1


def _joined_from_row(where: str, record: dict[str, Any]) -> Joined:
    arms, pmf, chosen = record.get("arms"), record.get("pmf"), record.get("chosen")
    if not isinstance(arms, list) or not arms or not all(isinstance(a, str) for a in arms):
        raise InvalidInput(f"{where}: arms must be a non-empty list of names", field="arms")
    if not isinstance(pmf, list) or len(pmf) != len(arms):
        raise InvalidInput(f"{where}: pmf must have one probability per arm", field="pmf")
    if chosen not in arms:
        raise InvalidInput(f"{where}: chosen {chosen!r} is not one of the arms", field="chosen")
    probability = pmf[arms.index(chosen)]
    if not isinstance(probability, int | float) or not (0 < probability <= 1):
        raise InvalidInput(
            f"{where}: the chosen arm's probability {probability!r} is outside (0, 1]", field="pmf"
        )
    reward = record.get("reward")
    if not isinstance(reward, int | float) or not math.isfinite(reward):
        raise InvalidInput(f"{where}: reward {reward!r} is not a finite number", field="reward")
    context = record.get("context")
    if isinstance(context, str):
        try:
            context = orjson.loads(context)
        except orjson.JSONDecodeError:
            raise InvalidInput(f"{where}: context is not JSON", field="context") from None
    if context is None:
        context = {}
    if not isinstance(context, dict):
        raise InvalidInput(f"{where}: context must be an object", field="context")
    decision = {"arms": arms, "pmf": [float(p) for p in pmf], "chosen": chosen, "context": context}
    features = record.get("action_features")
    if isinstance(features, str):
        features = orjson.loads(features)
    if isinstance(features, list):
        decision["action_features"] = features
    return {
        "decision": decision,  # type: ignore[typeddict-item]
        "reward": float(reward),
        "rewarded": bool(record.get("rewarded", True)),
        "n_rewards": int(record.get("n_rewards") or 0),
        "joined_ts_ms": int(record.get("ts_ms") or 0),
    }


def _from_parquet(path: Path, spec: ExperimentSpec) -> WarmStart:
    rows = [_joined_from_row(where, record) for where, record in _parquet_rows(path)]
    if not rows:
        raise InvalidInput(f"{path}: no rows", field="from")
    learner: Learner = new_learner(spec)
    window = EvaluationWindow(limit=len(rows))
    floor = spec.policy.min_arm_share
    for joined in rows:
        example = to_example(joined, spec)
        if example is None:
            continue
        candidate = apply_floor(learner.probabilities(example), floor)
        logged = joined["decision"]["pmf"]
        reward_hat = learner.reward_estimates(example)
        window.add(
            reward=example.reward,
            logged_prob=example.logged_prob,
            candidate_prob=candidate[example.chosen],
            current_prob=logged[example.chosen],
            reward_hat_logged=reward_hat[example.chosen],
            candidate_reward_hat=expected(reward_hat, candidate),
            current_reward_hat=expected(reward_hat, logged),
        )
        learner.learn(example)
    return WarmStart(learner.model_bytes(), learner.n_examples, _relabel(window.estimates()))


def _relabel(numbers: dict[str, Any]) -> dict[str, Any]:
    """In a warm start the comparison is with the policy that logged the data."""
    return {
        "candidate": numbers["candidate"],
        "logging_policy": numbers["current"],
        "difference": numbers["difference"],
        "logged": numbers["logged"],
    }


def _dsjson_lines(path: Path) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for file in _files(path, (".json", ".jsonl", ".dsjson")):
        with file.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                line = raw.strip()
                if not line:
                    continue
                where = f"{file.name} line {number}"
                try:
                    document = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise InvalidInput(f"{where}: not JSON ({exc})", field="from") from None
                yield where, line.decode(), document


def _check_dsjson(where: str, document: Any) -> tuple[int, float, float, list[float]]:
    if not isinstance(document, dict):
        raise InvalidInput(f"{where}: a DSJSON line is an object", field="from")
    missing = [
        k
        for k in ("_label_cost", "_label_probability", "_labelIndex", "c", "p")
        if k not in document
    ]
    if missing:
        raise InvalidInput(f"{where}: missing {missing}", field="from")
    actions = (document.get("c") or {}).get("_multi")
    if not isinstance(actions, list) or not actions:
        raise InvalidInput(f"{where}: c._multi must list the actions", field="c")
    index = document["_labelIndex"]
    if not isinstance(index, int) or not 0 <= index < len(actions):
        raise InvalidInput(
            f"{where}: _labelIndex {index!r} is not an action index", field="_labelIndex"
        )
    probability = document["_label_probability"]
    if not isinstance(probability, int | float) or not (0 < probability <= 1):
        raise InvalidInput(
            f"{where}: _label_probability {probability!r} is outside (0, 1]",
            field="_label_probability",
        )
    cost = document["_label_cost"]
    if not isinstance(cost, int | float) or not math.isfinite(cost):
        raise InvalidInput(
            f"{where}: _label_cost {cost!r} is not a finite number", field="_label_cost"
        )
    pmf = document["p"]
    if not isinstance(pmf, list) or len(pmf) != len(actions):
        raise InvalidInput(f"{where}: p must have one probability per action", field="p")
    return index, float(probability), -float(cost), [float(x) for x in pmf]


def _from_dsjson(path: Path, spec: ExperimentSpec) -> WarmStart:
    checked = [
        (where, line, *_check_dsjson(where, doc)) for where, line, doc in _dsjson_lines(path)
    ]
    if not checked:
        raise InvalidInput(f"{path}: no lines", field="from")
    policy = vowpalwabbit.Workspace(
        arg_list=[*vw_arguments(spec.policy), "--dsjson", "--save_resume"]
    )
    rewards = vowpalwabbit.Workspace(arg_list=[*reward_model_arguments(spec.policy), "--dsjson"])
    window = EvaluationWindow(limit=len(checked))
    floor = spec.policy.min_arm_share
    for _, line, index, probability, reward, logged_pmf in checked:
        # DSJSON's "p" lists probabilities in the order of "a" (action ids, 1-based).
        document = orjson.loads(line)
        order = document.get("a") or list(range(1, len(logged_pmf) + 1))
        logged = [0.0] * len(logged_pmf)
        for position, action in enumerate(order):
            if 1 <= action <= len(logged):
                logged[action - 1] = logged_pmf[position]
        candidate = apply_floor(policy.predict(line), floor)
        reward_hat = [-float(s) for s in rewards.predict(line)]
        window.add(
            reward=reward,
            logged_prob=probability,
            candidate_prob=candidate[index],
            current_prob=logged[index] if logged[index] > 0 else probability,
            reward_hat_logged=reward_hat[index],
            candidate_reward_hat=expected(reward_hat, candidate),
            current_reward_hat=expected(reward_hat, logged),
        )
        policy.learn(line)
        rewards.learn(line)
    return WarmStart(workspace_to_bytes(policy), len(checked), _relabel(window.estimates()))
