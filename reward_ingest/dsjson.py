"""Joined examples as VW's decision-service JSON (`--dsjson`), with the router's own features.

The `c` object carries exactly the features the router predicted with: the shared
namespaces of `featurize.namespaces(context)` and, per `_multi` entry, the action namespace
of `featurize.action_namespace(arm, features)`. VW's JSON parser names a string feature
key+value and a `true` feature by its key, as our text lines do, so hashes agree and a
model trained by stock VW on this export serves in the router.

VW's JSON parser skips keys that start with `_`. Such features (possible with caller-made
context keys) go into the namespace's `_text`, which VW splits on spaces into features of
value 1 with the same hashes; a numeric feature whose name starts with `_` has no JSON
spelling and is left out.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import orjson

from banditgate.events import Joined
from banditgate.featurize import action_namespace, namespaces


def vw_json_namespace(features: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    hidden: list[str] = []
    for name, value in features.items():
        if not name.startswith("_"):
            out[name] = value
        elif value is True:
            hidden.append(name)
    if hidden:
        out["_text"] = " ".join(hidden)
    return out


def iso_timestamp(ts_ms: int) -> str:
    moment = dt.datetime.fromtimestamp(ts_ms / 1000, tz=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_ms % 1000:03d}0000Z"


def dsjson_example(joined: Joined, arm_features: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One joined example; `arm_features`: the spec's action features by arm name."""
    decision = joined["decision"]
    arms = decision["arms"]
    pmf = decision["pmf"]
    chosen = arms.index(decision["chosen"])
    logged = decision.get("action_features")
    multi = []
    for index, arm in enumerate(arms):
        features = logged[index] if logged is not None else arm_features.get(arm)
        multi.append({"a": vw_json_namespace(action_namespace(arm, features))})
    context: dict[str, Any] = {
        name: vw_json_namespace(features)
        for name, features in namespaces(decision["context"]).items()
    }
    context["_multi"] = multi
    order = [chosen, *(i for i in range(len(arms)) if i != chosen)]
    reward = joined["reward"]
    example: dict[str, Any] = {
        "_label_cost": -reward,
        "_label_probability": pmf[chosen],
        "_label_Action": chosen + 1,
        "_labelIndex": chosen,
    }
    if joined["rewarded"]:
        example["o"] = [{"v": reward, "EventId": decision["event_id"], "ActionTaken": False}]
    example.update(
        {
            "Timestamp": iso_timestamp(decision["ts_ms"]),
            "Version": "1",
            "EventId": decision["event_id"],
            "a": [i + 1 for i in order],
            "c": context,
            "p": [pmf[i] for i in order],
            "VWState": {"m": f"{decision['experiment']}/{decision['policy_version']}"},
        }
    )
    return example


def dsjson_line(joined: Joined, arm_features: Mapping[str, Mapping[str, Any]]) -> bytes:
    return orjson.dumps(dsjson_example(joined, arm_features)) + b"\n"
