"""How each mode turns a request into a pmf over the arms.

Every mode yields a full pmf that is logged with the decision: static weights as
probabilities, a targeting rule or a one-hot default as p = 1. So data from any
mode can be evaluated off-policy or warm-start a bandit. A weights override
(weights API, rollout controller) takes precedence over the mode's default.
"""

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
    # Sticky keys: sample with this, independently of the version, instead of the event id.
    # A key then keeps its arm across weight changes unless its point leaves the arm's band.
    seed_key: str | None = None


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


def _text(raw: Any) -> str | None:
    if raw is None or isinstance(raw, dict | list):
        return None
    if isinstance(raw, bool):
        return "true" if raw else "false"
    return str(raw)


def _ab_rule(
    state: ExperimentState, actions: ActionSet, headers: Mapping[str, str], body: Any, version: int
) -> Allocation | None:
    """The first matching targeting rule sends the request to its arm with p = 1."""
    ab = state.spec.ab
    if ab is None:
        return None
    for rule in ab.rules:
        if rule.header is not None:
            value = headers.get(rule.header)
        else:
            value = _text(resolve(body, rule.body)) if rule.body is not None else None
        if value is None:
            continue
        matched = value == rule.equals if rule.equals is not None else value in (rule.in_ or ())
        if matched and rule.arm in actions.names:
            return Allocation(one_hot(actions, rule.arm), version)
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
        value = _text(resolve(body, sticky.body)) if sticky.body is not None else None
    return sticky_seed(state.name, value) if value else None


def sticky_seed(experiment: str, value: str) -> str:
    """Per experiment, so one user's arms in two experiments are independent draws."""
    return f"sticky\x00{experiment}\x00{value}"


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
            ruled = _ab_rule(state, actions, headers, body, static.version)
            if ruled is not None:
                return ruled
        key = sticky_key(state, headers, body) if spec.mode == "ab" else None
        return Allocation(static.probabilities(context, actions), static.version, key)
    if spec.mode == "bandit":
        policy = state.policy
        return Allocation(policy.probabilities(context, actions), policy.version)
    if spec.mode == "canary" and spec.canary is not None:
        return Allocation(one_hot(actions, spec.canary.baseline), 0)
    if spec.mode == "bluegreen" and spec.bluegreen is not None:
        return Allocation(one_hot(actions, spec.bluegreen.active), 0)
    if spec.mode == "shadow" and spec.shadow is not None:
        return Allocation(one_hot(actions, spec.shadow.primary), 0)
    return Allocation([1.0 / len(actions.names)] * len(actions.names), 0)
