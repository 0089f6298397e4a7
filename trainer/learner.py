"""Incremental learners: turn joined examples into policies, through the router's featurizer."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import orjson
import vowpalwabbit

from banditgate.auto import AUTO, CANDIDATES, concrete, learner_of_model
from banditgate.errors import InvalidPolicy
from banditgate.featurize import example_lines
from banditgate.linear_thompson import LinearThompsonModel
from banditgate.logged import Example as Example
from banditgate.logged import to_example as to_example
from banditgate.policy import (
    BetaCounts,
    LinearThompsonPolicy,
    ThompsonPolicy,
    new_workspace,
    workspace_from_bytes,
    workspace_to_bytes,
)
from banditgate.spec import ExperimentSpec, PolicySpec


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
        cost_offset: float = 0.0,
    ) -> None:
        self.spec = spec
        # The policy learns cost = cost_offset - reward, so an arm it has no data on is
        # estimated at reward cost_offset (0 by default; see TrainingLoop's restart).
        self.cost_offset = cost_offset
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
            cost_offset=float(header.get("offset", 0.0)),
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
        if self.cost_offset:
            shifted = (example.chosen, self.cost_offset - example.reward, probability)
            self.policy.learn(example_lines(example.context, example.actions.lines, shifted))
        else:
            self.policy.learn(lines)
        self.rewards.learn(lines)
        self.n_examples += 1

    def model_bytes(self) -> bytes:
        return workspace_to_bytes(self.policy)

    def state_bytes(self) -> bytes:
        return _frame(
            {"kind": self.kind, "n": self.n_examples, "offset": self.cost_offset},
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


class LinearThompsonLearner:
    """Contextual Thompson sampling (banditgate.linear_thompson): Bayesian linear regression
    of the scaled reward per arm over the featurizer's features.

    Learning needs no importance weights: the regression estimates each arm's reward
    given the context, whichever policy chose the arm. The policy's pmf is for the
    current model, without the spec's floor (the serving policy applies it).
    """

    kind = "linear_thompson"

    def __init__(
        self, *, low: float = 0.0, high: float = 1.0, model: LinearThompsonModel | None = None
    ) -> None:
        self.low, self.high = low, high
        self.model = model if model is not None else LinearThompsonModel()

    @property
    def n_examples(self) -> int:
        return self.model.n_examples

    @n_examples.setter
    def n_examples(self, value: int) -> None:
        self.model.n_examples = value

    def _scaled(self, reward: float) -> float:
        return min(max((reward - self.low) / (self.high - self.low), 0.0), 1.0)

    def probabilities(self, example: Example) -> list[float]:
        return LinearThompsonPolicy(self.model).probabilities(example.context, example.actions)

    def reward_estimates(self, example: Example) -> list[float]:
        means, _ = self.model.predictive(example.context, example.actions.names)
        return [self.low + (self.high - self.low) * float(m) for m in means]

    def learn(self, example: Example) -> None:
        arm = example.actions.names[example.chosen]
        self.model.learn(example.context, arm, self._scaled(example.reward))

    def model_bytes(self) -> bytes:
        return self.model.to_bytes()

    def state_bytes(self) -> bytes:
        return self.model_bytes()  # the model is the whole state

    @classmethod
    def from_bytes(
        cls, raw: bytes, *, low: float = 0.0, high: float = 1.0
    ) -> LinearThompsonLearner:
        return cls(low=low, high=high, model=LinearThompsonModel.from_bytes(raw))


class AutoLearner:
    """`learner: auto`: every candidate (banditgate.auto.CANDIDATES) learns every example.

    The training loop judges a challenger of each; the VW member's reward model (a cost
    regression independent of any policy) gives the DR estimates of all of them, so
    their estimates are comparable.
    """

    kind = AUTO

    def __init__(self, members: dict[str, Learner]) -> None:
        self.members = members

    @property
    def n_examples(self) -> int:
        return max(member.n_examples for member in self.members.values())

    @n_examples.setter
    def n_examples(self, value: int) -> None:
        for member in self.members.values():
            member.n_examples = value

    def probabilities(self, example: Example) -> list[float]:
        return self.members["vw"].probabilities(example)

    def reward_estimates(self, example: Example) -> list[float]:
        return self.members["vw"].reward_estimates(example)

    def learn(self, example: Example) -> None:
        for member in self.members.values():
            member.learn(example)

    def model_bytes(self) -> bytes:
        return self.members["vw"].model_bytes()

    def state_bytes(self) -> bytes:
        kinds = list(self.members)
        return _frame(
            {"kind": self.kind, "learners": kinds},
            *(self.members[kind].state_bytes() for kind in kinds),
        )

    @classmethod
    def new(cls, spec: ExperimentSpec, *, model: bytes | None = None) -> AutoLearner:
        """Fresh candidates; the one that built `model` (the serving one) starts from it."""
        warm = learner_of_model(model) if model is not None else None
        return cls(
            {
                kind: new_learner(concrete(spec, kind), model=model if kind == warm else None)
                for kind in CANDIDATES
            }
        )

    @classmethod
    def from_state(cls, spec: ExperimentSpec, raw: bytes) -> AutoLearner:
        header, blobs = _unframe(raw)
        if header.get("kind") != AUTO or list(header["learners"]) != list(CANDIDATES):
            raise InvalidPolicy("not the state of the auto learner")
        return cls(
            {
                kind: new_learner(concrete(spec, kind), state=blob)
                for kind, blob in zip(header["learners"], blobs, strict=True)
            }
        )


def new_learner(
    spec: ExperimentSpec, *, model: bytes | None = None, state: bytes | None = None
) -> Learner:
    learner = spec.policy.learner
    if learner == AUTO:
        if state is not None:
            return AutoLearner.from_state(spec, state)
        return AutoLearner.new(spec, model=model)
    if learner == "thompson":
        low, high = spec.reward.min, spec.reward.max
        if state is not None:
            return ThompsonLearner.from_state(low, high, state)
        counts = BetaCounts.from_bytes(model) if model is not None else None
        return ThompsonLearner(low, high, counts)
    if learner == "linear_thompson":
        low, high = spec.reward.min, spec.reward.max
        raw = state if state is not None else model
        if raw is not None:
            return LinearThompsonLearner.from_bytes(raw, low=low, high=high)
        return LinearThompsonLearner(low=low, high=high)
    if learner == "vw":
        if state is not None:
            return VWLearner.from_state(spec.policy, state)
        if model is not None:
            return VWLearner.from_model(spec.policy, model)
        return VWLearner(spec.policy)
    raise InvalidPolicy(f"the {learner!r} learner does not learn")


def expected(values: Sequence[float], pmf: Sequence[float]) -> float:
    return float(np.dot(values, pmf))
