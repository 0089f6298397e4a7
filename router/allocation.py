"""How each mode turns a request into a pmf over the arms."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from banditgate.featurize import ContextFeatures
from banditgate.pointers import resolve
from banditgate.policy import ActionSet
from router.runtime import ExperimentState


@dataclass
class Allocation:
    pmf: list[float]
    version: int
    learned: bool
    seed_key: str | None = None  # sample with this instead of the event id (sticky keys)


def one_hot(actions: ActionSet, arm: str) -> list[float]:
    return [1.0 if name == arm else 0.0 for name in actions.names]


def cookie(headers: Mapping[str, str], name: str) -> str | None:
    raw = headers.get("cookie")
    if not raw:
        return None
    for part in raw.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def _ab_overrides(
    state: ExperimentState, actions: ActionSet, headers: Mapping[str, str], body: Any, version: int
) -> Allocation | None:
    ab = state.spec.ab
    if ab is None:
        return None
    for rule in ab.rules:
        if rule.header is not None:
            value = headers.get(rule.header)
        else:
            raw = resolve(body, rule.body) if rule.body is not None else None
            value = None if raw is None else str(raw).lower() if isinstance(raw, bool) else str(raw)
        if value is None:
            continue
        if (rule.equals is not None and value == rule.equals) or (
            rule.in_ is not None and value in rule.in_
        ):
            if rule.arm in actions.names:
                return Allocation(one_hot(actions, rule.arm), version, learned=False)
    return None


def sticky_key(state: ExperimentState, headers: Mapping[str, str], body: Any) -> str | None:
    ab = state.spec.ab
    if ab is None or ab.sticky is None:
        return None
    sticky = ab.sticky
    if sticky.header is not None:
        value = headers.get(sticky.header)
    elif sticky.cookie is not None:
        value = cookie(headers, sticky.cookie)
    else:
        raw = resolve(body, sticky.body) if sticky.body is not None else None
        value = None if raw is None or isinstance(raw, dict | list) else str(raw)
    return f"sticky\x00{state.name}\x00{value}" if value else None


def allocate(
    state: ExperimentState,
    context: ContextFeatures,
    actions: ActionSet,
    headers: Mapping[str, str],
    body: Any,
) -> Allocation:
    spec = state.spec
    static = state.static
    if static is not None:
        if spec.mode == "ab":
            ruled = _ab_overrides(state, actions, headers, body, static.version)
            if ruled is not None:
                return ruled
        key = sticky_key(state, headers, body) if spec.mode == "ab" else None
        return Allocation(static.probabilities(context, actions), static.version, False, key)
    if spec.mode == "bandit":
        policy = state.policy
        return Allocation(
            policy.probabilities(context, actions), policy.version, policy.learner != "static"
        )
    if spec.mode == "canary" and spec.canary is not None:
        return Allocation(one_hot(actions, spec.canary.baseline), 0, False)
    if spec.mode == "bluegreen" and spec.bluegreen is not None:
        return Allocation(one_hot(actions, spec.bluegreen.active), 0, False)
    if spec.mode == "shadow" and spec.shadow is not None:
        return Allocation(one_hot(actions, spec.shadow.primary), 0, False)
    return Allocation([1.0 / len(actions.names)] * len(actions.names), 0, False)
