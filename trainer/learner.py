"""Incremental learners: turn joined examples into policies, through the router's featurizer."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import orjson
import vowpalwabbit

from banditgate.errors import InvalidPolicy
from banditgate.events import Joined
from banditgate.featurize import action_line, example_lines
from banditgate.policy import (
    ActionSet,
    BetaCounts,
    ThompsonPolicy,
    new_workspace,
    workspace_from_bytes,
    workspace_to_bytes,
)
from banditgate.spec import ExperimentSpec, PolicySpec


@dataclass
class Example:
    """One joined example, ready to learn from and to evaluate on."""

    context: dict[str, Any]
    actions: ActionSet
    chosen: int
    logged_prob: float
    reward: float
    rewarded: bool = True  # a real reward, not the default of one that never came

    @property
    def shared_and_actions(self) -> list[str]:
        return example_lines(self.context, self.actions.lines)


def to_example(joined: Joined, spec: ExperimentSpec | None) -> Example | None:
    """The learnable form of a joined example, or None if it cannot be learned from."""
    decision = joined["decision"]
    names = decision.get("arms") or []
    pmf = decision.get("pmf") or []
    chosen = decision.get("chosen")
    if not names or len(pmf) != len(names) or chosen not in names:
        return None
    index = names.index(chosen)
    probability = float(pmf[index])
    if not (0.0 < probability <= 1.0) or not math.isfinite(joined["reward"]):
        return None
    supplied = decision.get("action_features")
    lines = []
    for position, name in enumerate(names):
        if supplied is not None and position < len(supplied):
            features = supplied[position]
        else:
            arm = spec.arm(name) if spec is not None else None
            features = arm.features if arm is not None else {}
        lines.append(action_line(name, features))
    context = decision.get("context") or {}
    return Example(
        context,
        ActionSet(tuple(names), tuple(lines)),
        index,
        probability,
        joined["reward"],
        bool(joined.get("rewarded", True)),
    )


class Learner(Protocol):
    kind: str
    n_examples: int

    def probabilities(self, example: Example) -> list[float]: ...
    def reward_estimates(self, example: Example) -> list[float]: ...
    def learn(self, example: Example) -> None: ...
    def model_bytes(self) -> bytes: ...
    def state_bytes(self) -> bytes: ...


def _frame(header: dict[str, Any], *blobs: bytes) -> bytes:
    head = orjson.dumps({**header, "sizes": [len(b) for b in blobs]})
    return struct.pack(">I", len(head)) + head + b"".join(blobs)


def _unframe(raw: bytes) -> tuple[dict[str, Any], list[bytes]]:
    (size,) = struct.unpack(">I", raw[:4])
    header = orjson.loads(raw[4 : 4 + size])
    blobs, offset = [], 4 + size
    for length in header["sizes"]:
        blobs.append(raw[offset : offset + length])
        offset += length
    return header, blobs


def reward_model_arguments(spec: PolicySpec) -> list[str]:
    """The DR reward model: a cost regression on the same features, independent of the policy's settings."""
    args = ["--cb_adf", "--cb_type", "mtr", "--quiet", "--save_resume"]
    interactions = ["ca", "ta"] if spec.interactions == "auto" else spec.interactions
    for interaction in interactions:
        args += ["--interactions", interaction]
    return args


class VWLearner:
    """The policy (cb_explore_adf, exploration per spec) plus a reward model (cb_adf) for DR."""

    kind = "vw"

    def __init__(
        self,
        spec: PolicySpec,
        *,
        policy: vowpalwabbit.Workspace | None = None,
        rewards: vowpalwabbit.Workspace | None = None,
        n_examples: int = 0,
    ) -> None:
        self.spec = spec
        self.policy = policy if policy is not None else new_workspace(spec, save_resume=True)
        self.rewards = (
            rewards
            if rewards is not None
            else vowpalwabbit.Workspace(arg_list=reward_model_arguments(spec))
        )
        self.n_examples = n_examples

    @classmethod
    def from_model(cls, spec: PolicySpec, model: bytes, n_examples: int = 0) -> VWLearner:
        """Continue learning from a published model (warm start)."""
        return cls(
            spec, policy=workspace_from_bytes(model, extra=["--save_resume"]), n_examples=n_examples
        )

    @classmethod
    def from_state(cls, spec: PolicySpec, raw: bytes) -> VWLearner:
        header, (policy, rewards) = _unframe(raw)
        return cls(
            spec,
            policy=workspace_from_bytes(policy, extra=["--save_resume"]),
            rewards=workspace_from_bytes(rewards, extra=["--save_resume"]),
            n_examples=int(header["n"]),
        )

    def probabilities(self, example: Example) -> list[float]:
        pmf: list[float] = self.policy.predict(example.shared_and_actions)
        return pmf

    def reward_estimates(self, example: Example) -> list[float]:
        scores = self.rewards.predict(example.shared_and_actions)
        return [-float(cost) for cost in scores]

    def learn(self, example: Example) -> None:
        # Capping 1/p keeps MTR's regression targets and bounds one example's step.
        probability = max(example.logged_prob, 1.0 / self.spec.max_importance_weight)
        label = (example.chosen, -example.reward, probability)
        lines = example_lines(example.context, example.actions.lines, label)
        self.policy.learn(lines)
        self.rewards.learn(lines)
        self.n_examples += 1

    def model_bytes(self) -> bytes:
        return workspace_to_bytes(self.policy)

    def state_bytes(self) -> bytes:
        return _frame(
            {"kind": self.kind, "n": self.n_examples},
            self.model_bytes(),
            workspace_to_bytes(self.rewards),
        )


class ThompsonLearner:
    """Beta-Bernoulli counts per arm; rewards are scaled to [0, 1] by the spec's bounds."""

    kind = "thompson"

    def __init__(
        self, low: float, high: float, counts: BetaCounts | None = None, n_examples: int = 0
    ) -> None:
        self.low, self.high = low, high
        self.counts = counts or BetaCounts()
        self.n_examples = n_examples
        self._pmf_cache: dict[tuple[str, ...], list[float]] = {}
        self._pmf_at = -1

    def _scaled(self, reward: float) -> float:
        return min(max((reward - self.low) / (self.high - self.low), 0.0), 1.0)

    def probabilities(self, example: Example) -> list[float]:
        # P(best) by simulation is costly; refresh it every 50 examples.
        if self.n_examples - self._pmf_at >= 50:
            self._pmf_cache.clear()
            self._pmf_at = self.n_examples
        names = example.actions.names
        pmf = self._pmf_cache.get(names)
        if pmf is None:
            pmf = ThompsonPolicy(self.counts, version=self.n_examples).probabilities(
                {}, example.actions
            )
            self._pmf_cache[names] = pmf
        return pmf

    def reward_estimates(self, example: Example) -> list[float]:
        out = []
        for name in example.actions.names:
            alpha = self.counts.alpha.get(name, 1.0)
            beta = self.counts.beta.get(name, 1.0)
            out.append(self.low + (self.high - self.low) * alpha / (alpha + beta))
        return out

    def learn(self, example: Example) -> None:
        self.counts.update(example.actions.names[example.chosen], self._scaled(example.reward))
        self.n_examples += 1

    def model_bytes(self) -> bytes:
        return self.counts.to_bytes()

    def state_bytes(self) -> bytes:
        return _frame({"kind": self.kind, "n": self.n_examples}, self.model_bytes())

    @classmethod
    def from_state(cls, low: float, high: float, raw: bytes) -> ThompsonLearner:
        header, (model,) = _unframe(raw)
        return cls(low, high, BetaCounts.from_bytes(model), int(header["n"]))


def new_learner(
    spec: ExperimentSpec, *, model: bytes | None = None, state: bytes | None = None
) -> Learner:
    learner = spec.policy.learner
    if learner == "thompson":
        low, high = spec.reward.min, spec.reward.max
        if state is not None:
            return ThompsonLearner.from_state(low, high, state)
        counts = BetaCounts.from_bytes(model) if model is not None else None
        return ThompsonLearner(low, high, counts)
    if learner == "vw":
        if state is not None:
            return VWLearner.from_state(spec.policy, state)
        if model is not None:
            return VWLearner.from_model(spec.policy, model)
        return VWLearner(spec.policy)
    raise InvalidPolicy(f"the {learner!r} learner does not learn")


def expected(values: Sequence[float], pmf: Sequence[float]) -> float:
    return float(np.dot(values, pmf))
