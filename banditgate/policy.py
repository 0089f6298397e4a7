"""Policies: a probability for every action, given context features.

A policy is immutable once built; a new version is a new object, swapped in by
one reference assignment (load fully first, then swap).
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import orjson
import vowpalwabbit

from banditgate.auto import AUTO, concrete, learner_of_model
from banditgate.errors import InvalidPolicy
from banditgate.featurize import ContextFeatures, arm_action_lines, shared_line
from banditgate.linear_thompson import MAGIC as LINEAR_THOMPSON_MAGIC
from banditgate.linear_thompson import (
    LinearThompsonModel,
    floor_for,
    win_probabilities,
)
from banditgate.spec import ExperimentSpec, PolicySpec

PMF_CACHE_SIZE = 8192


@dataclass(frozen=True)
class ActionSet:
    """The actions a decision chooses among, with their VW lines."""

    names: tuple[str, ...]
    lines: tuple[str, ...]
    features: tuple[dict[str, Any], ...] | None = None

    @classmethod
    def from_spec(cls, spec: ExperimentSpec) -> ActionSet:
        return cls(tuple(spec.arm_names), tuple(arm_action_lines(spec.arms)))


class Policy(Protocol):
    version: int
    learner: str

    def probabilities(self, context: ContextFeatures, actions: ActionSet) -> list[float]: ...


def exploration_args(spec: PolicySpec) -> list[str]:
    exploration = spec.exploration
    match exploration.type:
        case "epsilon":
            return ["--epsilon", f"{exploration.epsilon:g}"]
        case "cover":
            return ["--cover", str(exploration.n), "--psi", f"{exploration.psi:g}"]
        case "bag":
            return ["--bag", str(exploration.n), "--epsilon", f"{exploration.epsilon:g}"]
        case "softmax":
            return ["--softmax", "--lambda", f"{exploration.lambda_:g}"]
        case "squarecb":
            return ["--squarecb", "--gamma_scale", f"{exploration.gamma_scale:g}"]
    raise InvalidPolicy(f"unknown exploration {exploration.type!r}")


AUTOML_CONFIGS = 4


def vw_arguments(spec: PolicySpec) -> list[str]:
    args = ["--cb_explore_adf", "--quiet"]
    if spec.interactions == "auto":
        # VW's online interaction search (champion/challenger over interaction sets).
        # In 10,000-request runs it never changed configuration (BENCHMARKS.md).
        args += ["--automl", str(AUTOML_CONFIGS)]
    else:
        for interaction in spec.interactions:
            args += ["--interactions", interaction]
    args += exploration_args(spec)
    args += ["--cb_type", spec.cb_type, "-l", f"{spec.learning_rate:g}"]
    args += spec.vw_args.split()
    return args


def new_workspace(spec: PolicySpec, *, save_resume: bool = False) -> vowpalwabbit.Workspace:
    args = vw_arguments(spec)
    if save_resume:
        args.append("--save_resume")
    try:
        return vowpalwabbit.Workspace(arg_list=args)
    except Exception as exc:
        raise InvalidPolicy(f"VW refused arguments {' '.join(args)!r}: {exc}") from None


def workspace_from_bytes(model: bytes, *, extra: Sequence[str] = ()) -> vowpalwabbit.Workspace:
    fd, path = tempfile.mkstemp(suffix=".vw")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(model)
        try:
            return vowpalwabbit.Workspace(arg_list=["--quiet", "-i", path, *extra])
        except Exception as exc:
            raise InvalidPolicy(f"not a loadable VW model: {exc}") from None
    finally:
        os.unlink(path)


def workspace_to_bytes(workspace: vowpalwabbit.Workspace) -> bytes:
    fd, path = tempfile.mkstemp(suffix=".vw")
    os.close(fd)
    try:
        workspace.save(path)
        with open(path, "rb") as handle:
            return handle.read()
    finally:
        os.unlink(path)


class VWPolicy:
    """A VW model as served: its pmf with the spec's floor applied, cached per context."""

    learner = "vw"

    def __init__(self, workspace: vowpalwabbit.Workspace, version: int, floor: float = 0.0) -> None:
        self.workspace = workspace
        self.version = version
        self.floor = floor
        self._cache: dict[Any, list[float]] = {}

    def probabilities(self, context: ContextFeatures, actions: ActionSet) -> list[float]:
        # cb_explore_adf prediction is deterministic for a fixed model, and contexts
        # repeat (features are bucketed): cache by the features themselves, so a hit
        # costs one tuple hash and skips building the VW line.
        try:
            key: Any = (tuple(context.items()), actions.lines)
            pmf = self._cache.get(key)
        except TypeError:  # a list-valued feature: not hashable, not cached
            key, pmf = None, None
        if pmf is None:
            pmf = apply_floor(
                self.workspace.predict([shared_line(context), *actions.lines]), self.floor
            )
            if key is not None:
                if len(self._cache) >= PMF_CACHE_SIZE:
                    self._cache.clear()
                self._cache[key] = pmf
        return pmf


def remember(cache: dict[Any, list[float]], key: Any, pmf: list[float]) -> None:
    """Action sets can come from clients (rank): the cache stays bounded."""
    if len(cache) >= PMF_CACHE_SIZE:
        cache.clear()
    cache[key] = pmf


class StaticPolicy:
    learner = "static"

    def __init__(self, weights: dict[str, float], version: int = 0) -> None:
        self.weights = dict(weights)
        self.version = version
        self._cache: dict[tuple[str, ...], list[float]] = {}

    def probabilities(self, context: ContextFeatures, actions: ActionSet) -> list[float]:
        pmf = self._cache.get(actions.names)
        if pmf is None:
            pmf = normalise([max(self.weights.get(name, 0.0), 0.0) for name in actions.names])
            remember(self._cache, actions.names, pmf)
        return pmf


@dataclass
class BetaCounts:
    alpha: dict[str, float] = field(default_factory=dict)
    beta: dict[str, float] = field(default_factory=dict)

    def update(self, arm: str, reward01: float) -> None:
        self.alpha[arm] = self.alpha.get(arm, 1.0) + reward01
        self.beta[arm] = self.beta.get(arm, 1.0) + (1.0 - reward01)

    def to_bytes(self) -> bytes:
        return orjson.dumps({"alpha": self.alpha, "beta": self.beta})

    @classmethod
    def from_bytes(cls, raw: bytes) -> BetaCounts:
        try:
            data = orjson.loads(raw)
            counts = cls(
                {str(k): float(v) for k, v in data["alpha"].items()},
                {str(k): float(v) for k, v in data["beta"].items()},
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            raise InvalidPolicy(
                "not a Thompson sampling model (JSON with alpha and beta)"
            ) from None
        for value in [*counts.alpha.values(), *counts.beta.values()]:
            if not (math.isfinite(value) and value > 0):
                raise InvalidPolicy("Beta parameters must be positive and finite")
        return counts


class ThompsonPolicy:
    """Beta-Bernoulli Thompson sampling; the logged pmf is P(arm has the highest draw)."""

    learner = "thompson"
    draws = 4000

    def __init__(self, counts: BetaCounts, version: int = 0, floor: float = 0.0) -> None:
        self.counts = counts
        self.version = version
        self.floor = floor
        self._cache: dict[tuple[str, ...], list[float]] = {}

    def probabilities(self, context: ContextFeatures, actions: ActionSet) -> list[float]:
        pmf = self._cache.get(actions.names)
        if pmf is None:
            pmf = self._win_probabilities(actions.names)
            remember(self._cache, actions.names, pmf)
        return pmf

    def _win_probabilities(self, names: Sequence[str]) -> list[float]:
        rng = np.random.default_rng(self.version & 0xFFFFFFFF)  # unpublished snapshots are -1
        alpha = np.array([self.counts.alpha.get(n, 1.0) for n in names])
        beta = np.array([self.counts.beta.get(n, 1.0) for n in names])
        samples = rng.beta(alpha, beta, size=(self.draws, len(names)))
        wins = np.bincount(samples.argmax(axis=1), minlength=len(names))
        return apply_floor(
            normalise(list((wins + 0.5) / (self.draws + 0.5 * len(names)))), self.floor
        )


class LinearThompsonPolicy:
    """Contextual Thompson sampling (banditgate.linear_thompson) as served: P(win) per
    context with a floor that shrinks with evidence, cached per context."""

    learner = "linear_thompson"

    def __init__(
        self, model: LinearThompsonModel, version: int = 0, min_arm_share: float = 0.0
    ) -> None:
        self.model = model
        self.version = version
        self.min_arm_share = min_arm_share
        self._cache: dict[Any, list[float]] = {}

    def probabilities(self, context: ContextFeatures, actions: ActionSet) -> list[float]:
        names = actions.names
        try:
            key: Any = (tuple(context.items()), names)
            pmf = self._cache.get(key)
        except TypeError:  # a list-valued feature: not hashable, not cached
            key, pmf = None, None
        if pmf is None:
            means, deviations = self.model.predictive(context, names)
            floor = floor_for(self.model.n_examples, len(names), self.min_arm_share)
            pmf = apply_floor(win_probabilities(means, deviations), floor)
            if key is not None:
                if len(self._cache) >= PMF_CACHE_SIZE:
                    self._cache.clear()
                self._cache[key] = pmf
        return pmf


def normalise(weights: Sequence[float]) -> list[float]:
    """Plain Python floats summing to 1 (numpy scalars in a pmf would not encode in the log)."""
    total = float(sum(weights))
    if total <= 0 or not math.isfinite(total):
        return [1.0 / len(weights)] * len(weights)
    return [float(w) / total for w in weights]


def apply_floor(pmf: Sequence[float], floor: float) -> list[float]:
    """Every action gets at least `floor`; the rest is shared in proportion to the pmf.

    The result is plain Python floats summing to 1: what a policy returns is logged as is.
    """
    k = len(pmf)
    floor = min(max(floor, 0.0), 1.0 / k)
    total = float(sum(pmf))
    if total <= 0 or not math.isfinite(total):
        return [1.0 / k] * k
    scale = 1.0 - k * floor
    return [floor + scale * float(p) / total for p in pmf]


def unit_fraction(key: str) -> float:
    """Where a string falls in [0, 1), uniformly and always the same: sampling by event id
    (which arm, whether to mirror or capture) that a replay reproduces."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 18446744073709551616.0


def sample_index(pmf: Sequence[float], event_id: str, version: int) -> int:
    """Deterministic in (event id, policy version): a decision can be replayed."""
    u = unit_fraction(f"{event_id}\x00{version}")
    cumulative = 0.0
    last = 0
    for index, p in enumerate(pmf):
        if p > 0:
            last = index
            cumulative += p
            if u < cumulative:
                return index
    return last


def default_weights(spec: ExperimentSpec) -> dict[str, float]:
    if spec.policy.weights is not None:
        return dict(spec.policy.weights)
    if any(arm.weight is not None for arm in spec.arms):
        return {arm.name: arm.weight or 0.0 for arm in spec.arms}
    return {arm.name: 1.0 for arm in spec.arms}


def build_policy(spec: ExperimentSpec, model: bytes | None, version: int) -> Policy:
    """The policy for `spec` from a registry model (None: the cold-start policy).

    Learned policies carry the spec's `min_arm_share` floor: what they return is
    what routers log, and what the trainer evaluates.
    """
    learner = spec.policy.learner
    if learner == AUTO:
        return build_policy(concrete(spec, learner_of_model(model)), model, version)
    if learner == "static":
        weights = default_weights(spec)
        if model is not None:
            try:
                weights = {str(k): float(v) for k, v in orjson.loads(model).items()}
            except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
                raise InvalidPolicy("a static policy model is a JSON object of weights") from None
        return StaticPolicy(weights, version)
    if learner == "thompson":
        counts = BetaCounts.from_bytes(model) if model is not None else BetaCounts()
        return ThompsonPolicy(counts, version, spec.policy.min_arm_share)
    if learner == "linear_thompson":
        linear = (
            LinearThompsonModel.from_bytes(model) if model is not None else LinearThompsonModel()
        )
        return LinearThompsonPolicy(linear, version, spec.policy.min_arm_share)
    if model is not None:
        _refuse_other_learners_models(model)
    workspace = new_workspace(spec.policy) if model is None else workspace_from_bytes(model)
    return VWPolicy(workspace, version, spec.policy.min_arm_share)


def _refuse_other_learners_models(model: bytes) -> None:
    """A VW model is binary; say what it is instead when it is recognisably another learner's."""
    if model.startswith(LINEAR_THOMPSON_MAGIC):
        raise InvalidPolicy("not a VW model: this is a linear_thompson model")
    if model.lstrip()[:1] in (b"{", b"["):
        raise InvalidPolicy("not a VW model: this is JSON (a thompson or static model?)")


def validate_model(spec: ExperimentSpec, model: bytes) -> Policy:
    """Load a model and check it can serve this experiment's actions; raise InvalidPolicy if not."""
    policy = build_policy(spec, model, version=0)
    actions = ActionSet.from_spec(spec)
    if isinstance(policy, VWPolicy):
        arguments = policy.workspace.get_arguments()
        if "--cb_explore_adf" not in arguments:
            raise InvalidPolicy(
                "the VW model was not trained with --cb_explore_adf "
                f"(its arguments: {' '.join(arguments)})"
            )
        _check_action_set(spec, policy)
    learned = policy.model.arms if isinstance(policy, LinearThompsonPolicy) else None
    if learned and not set(learned) & set(spec.arm_names):
        raise InvalidPolicy(
            f"the model has learned about arms {sorted(learned)}, none of this "
            f"experiment's {spec.arm_names}: it was trained on a different action set"
        )
    try:
        pmf = policy.probabilities({}, actions)
    except Exception as exc:
        raise InvalidPolicy(f"the model cannot score this experiment's arms: {exc}") from None
    if len(pmf) != len(actions.names) or not math.isclose(sum(pmf), 1.0, abs_tol=1e-3):
        raise InvalidPolicy(
            f"the model returned {len(pmf)} probabilities summing to {sum(pmf):.4f} "
            f"for {len(actions.names)} arms"
        )
    return policy


def _check_action_set(spec: ExperimentSpec, policy: VWPolicy) -> None:
    """A model that has learned must know at least one of this experiment's arms."""
    workspace = policy.workspace
    constant = _VW_CONSTANT_HASH & (workspace.num_weights() - 1)
    if workspace.get_weighted_examples() <= 0 and not _has_weight(workspace, constant):
        return  # a fresh model knows no arm, and needs to
    namespace = workspace.hash_space("a")
    if not any(
        _has_weight(workspace, workspace.hash_feature(f"arm{n}", namespace)) for n in spec.arm_names
    ):
        raise InvalidPolicy(
            "the model has learned, but about none of this experiment's arms "
            f"{spec.arm_names}: it was trained on a different action set"
        )


_VW_CONSTANT_HASH = 11650396  # VW's index of the implicit Constant feature


def _has_weight(workspace: vowpalwabbit.Workspace, index: int) -> bool:
    # Reductions with several models (cover, bag) interleave them: feature i of model k
    # lives at i * m + k * stride for a power-of-two m. Search every layout; a hash
    # collision can only make this lenient, never reject a model that knows the arm.
    stride = max(workspace.get_stride(), 1)
    multiplier = 1
    while multiplier <= 64:
        base = index * multiplier
        if any(workspace.get_weight(base, offset) != 0.0 for offset in range(multiplier * stride)):
            return True
        multiplier *= 2
    return False
