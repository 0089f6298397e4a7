"""Contextual Thompson sampling: Bayesian linear regression of the reward per arm.

Features are the featurizer's, as VW sees them (`banditgate.featurize.namespaces`:
namespace `c` for body and header values, `t` for text features), plus a constant.
Each arm has its own weights, so every feature interacts with the arm (VW's `ca`
and `ta`). Rewards are scaled to [0, 1] by the spec's bounds and centred on 0.5, so
the prior (precision `PRIOR_PRECISION` on every weight) says "0.5, give or take 0.5"
and shrinks each context feature's effect toward the arm's overall rate until
evidence says otherwise (numeric features enter as sign(v) log(1 + |v|)). The noise variance of an arm is its rewards' variance
(Bernoulli 0/1 rewards at p: p(1 - p)), with a prior of 0.25 worth two examples.

Given a context x, arm a's sampled reward x.theta_a (theta_a drawn from its
posterior) is normal with mean x.mu_a and variance s_a^2 x' A_a^-1 x, independent
across arms. The policy's pmf is P(arm has the highest draw): for two arms exactly
(a normal CDF), for more estimated from `DRAWS` draws of those normals with common
random numbers from a generator of fixed seed: the same model and context give the same pmf in every router and in the
trainer's gate, so what is logged is exactly the distribution the arm is drawn from
(by `sample_index`, seeded from the event id: a decision replays exactly), and a
policy can be evaluated off-policy on it. A floor keeps every arm's probability at
least max(min_arm_share, 1 / (k sqrt(1 + n))) for n examples learned: uniform at
the start, shrinking with evidence, so importance weights stay bounded.

At most `MAX_FEATURES` distinct features are learned (in order of appearance);
later ones are ignored. Arm features (`arms[].features`) are not used: the arm
itself is the model.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import orjson

from banditgate.errors import InvalidPolicy
from banditgate.featurize import ContextFeatures, namespaces

KIND = "linear_thompson"
MAGIC = b"banditgate:linear_thompson:1\n"
MAX_FEATURES = 256
PRIOR_PRECISION = 1.0  # of the constant: the arm's overall rate
FEATURE_PRIOR_PRECISION = 1.0  # of each feature's effect (4 and 16 measured no better)
PRIOR_VARIANCE = 0.25
PRIOR_VARIANCE_WEIGHT = 2.0
MIN_VARIANCE = 0.01
DRAWS = 1000
SEED = 20261130
CACHE_SIZE = 8192
CONSTANT = "\x00constant"


def feature_items(context: ContextFeatures) -> list[tuple[str, float]]:
    """(name, value) of the context's features, named as the VW lines name them.

    Numbers enter as sign(v) log(1 + |v|): a raw price of 10,000 next to indicator
    features of 1 would make the regression's covariance updates lose precision.
    """
    out = [(CONSTANT, 1.0)]
    for space, features in namespaces(context).items():
        for name, value in features.items():
            if value is True:
                out.append((f"{space}^{name}", 1.0))
                continue
            number = float(value)
            if number != 0.0 and math.isfinite(number):
                out.append((f"{space}^{name}", math.copysign(math.log1p(abs(number)), number)))
    return out


def prior_covariance(dims: int) -> np.ndarray:
    covariance = np.eye(dims) / FEATURE_PRIOR_PRECISION
    covariance[0, 0] = 1.0 / PRIOR_PRECISION
    return covariance


@dataclass
class ArmPosterior:
    """A^-1 (the posterior covariance over the noise variance) and b = sum x y, over the
    model's features; n, sum and sum of squares of the scaled rewards."""

    covariance: np.ndarray
    b: np.ndarray
    n: float = 0.0
    total: float = 0.0
    squares: float = 0.0

    @classmethod
    def prior(cls, dims: int) -> ArmPosterior:
        return cls(prior_covariance(dims), np.zeros(dims))

    def grow(self, dims: int) -> None:
        old = self.b.size
        if dims <= old:
            return
        self.__dict__.pop("_weights", None)
        covariance = prior_covariance(dims)
        covariance[:old, :old] = self.covariance
        self.covariance = covariance
        self.b = np.concatenate([self.b, np.zeros(dims - old)])

    @property
    def noise_variance(self) -> float:
        mean = self.total / self.n if self.n else 0.5
        spread = max(self.squares - self.n * mean * mean, 0.0)
        variance = (spread + PRIOR_VARIANCE * PRIOR_VARIANCE_WEIGHT) / (
            self.n + PRIOR_VARIANCE_WEIGHT
        )
        return min(max(variance, MIN_VARIANCE), PRIOR_VARIANCE)

    @property
    def weights(self) -> np.ndarray:
        """The posterior mean A^-1 b, kept until the next update."""
        mean = self.__dict__.get("_weights")
        if mean is None or mean.size != self.b.size:
            mean = self.__dict__["_weights"] = self.covariance @ self.b
        return mean

    def update(self, index: np.ndarray, values: np.ndarray, reward01: float) -> None:
        self.__dict__.pop("_weights", None)
        # Sherman-Morrison on the sparse x: A^-1 -= (A^-1 x)(A^-1 x)' / (1 + x' A^-1 x).
        ax = self.covariance[:, index] @ values
        denominator = 1.0 + float(values @ ax[index])
        self.covariance -= np.outer(ax, ax) / denominator
        self.b[index] += values * (reward01 - 0.5)
        self.n += 1.0
        self.total += reward01
        self.squares += reward01 * reward01

    def predictive(self, index: np.ndarray, values: np.ndarray) -> tuple[float, float]:
        """Mean (scaled to [0, 1]) and variance of x.theta under the posterior."""
        mean = 0.5 + float(values @ self.weights[index])
        spread = float(values @ self.covariance.take(index, 0).take(index, 1) @ values)
        return mean, self.noise_variance * max(spread, 0.0)


class LinearThompsonModel:
    """The learnable state; `to_bytes` is the published model."""

    def __init__(
        self,
        features: dict[str, int] | None = None,
        arms: dict[str, ArmPosterior] | None = None,
        n_examples: int = 0,
    ) -> None:
        self.features = features if features is not None else {CONSTANT: 0}
        self.arms = arms if arms is not None else {}
        self.n_examples = n_examples

    @property
    def dims(self) -> int:
        return len(self.features)

    def vector(
        self, context: ContextFeatures, *, grow: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        index: list[int] = []
        values: list[float] = []
        for name, value in feature_items(context):
            position = self.features.get(name)
            if position is None:
                if not grow or len(self.features) >= MAX_FEATURES:
                    continue
                position = self.features[name] = len(self.features)
            index.append(position)
            values.append(value)
        return np.array(index, dtype=np.intp), np.array(values)

    def arm(self, name: str) -> ArmPosterior:
        posterior = self.arms.get(name)
        if posterior is None:
            posterior = self.arms[name] = ArmPosterior.prior(self.dims)
        posterior.grow(self.dims)
        return posterior

    def learn(self, context: ContextFeatures, arm: str, reward01: float) -> None:
        index, values = self.vector(context, grow=True)
        self.arm(arm).update(index, values, min(max(reward01, 0.0), 1.0))
        self.n_examples += 1

    def predictive(
        self, context: ContextFeatures, names: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per arm: the mean and standard deviation of its sampled reward in this context."""
        index, values = self.vector(context)
        means, deviations = np.empty(len(names)), np.empty(len(names))
        for position, name in enumerate(names):
            posterior = self.arms.get(name)
            if posterior is None:
                # A new arm: its prior, 0.5 +- sqrt(0.25 x' covariance x).
                means[position] = 0.5
                spread = (
                    values[0] ** 2 / PRIOR_PRECISION
                    + float(values[1:] @ values[1:]) / FEATURE_PRIOR_PRECISION
                )
                deviations[position] = math.sqrt(PRIOR_VARIANCE * spread)
                continue
            posterior.grow(self.dims)
            mean, variance = posterior.predictive(index, values)
            means[position], deviations[position] = mean, math.sqrt(variance)
        return means, deviations

    def to_bytes(self) -> bytes:
        names = list(self.arms)
        for name in names:
            self.arms[name].grow(self.dims)
        header = {
            "kind": KIND,
            "features": sorted(self.features, key=self.features.__getitem__),
            "arms": [
                {"name": n, "n": a.n, "total": a.total, "squares": a.squares}
                for n, a in self.arms.items()
            ],
            "n_examples": self.n_examples,
        }
        head = orjson.dumps(header)
        blobs = [b for a in self.arms.values() for b in (a.covariance.tobytes(), a.b.tobytes())]
        return MAGIC + struct.pack(">I", len(head)) + head + b"".join(blobs)

    @classmethod
    def from_bytes(cls, raw: bytes) -> LinearThompsonModel:
        if not raw.startswith(MAGIC):
            raise InvalidPolicy(
                f"not a {KIND} model: it does not start with the {KIND} header ({_looks_like(raw)})"
            )
        try:
            offset = len(MAGIC)
            (size,) = struct.unpack(">I", raw[offset : offset + 4])
            header = orjson.loads(raw[offset + 4 : offset + 4 + size])
            offset += 4 + size
            features = {str(name): i for i, name in enumerate(header["features"])}
            dims = len(features)
            if header["kind"] != KIND or dims < 1 or dims > MAX_FEATURES:
                raise ValueError("bad header")
            arms: dict[str, ArmPosterior] = {}
            for item in header["arms"]:
                covariance = np.frombuffer(raw, np.float64, dims * dims, offset).reshape(dims, dims)
                offset += dims * dims * 8
                b = np.frombuffer(raw, np.float64, dims, offset)
                offset += dims * 8
                posterior = ArmPosterior(
                    covariance.copy(),
                    b.copy(),
                    float(item["n"]),
                    float(item["total"]),
                    float(item["squares"]),
                )
                numbers = [posterior.n, posterior.total, posterior.squares]
                if not (np.isfinite(posterior.covariance).all() and np.isfinite(posterior.b).all()):
                    raise ValueError("non-finite weights")
                if not all(math.isfinite(x) and x >= 0 for x in numbers):
                    raise ValueError("bad counts")
                arms[str(item["name"])] = posterior
            if offset != len(raw):
                raise ValueError("trailing bytes")
            return cls(features, arms, int(header["n_examples"]))
        except (ValueError, KeyError, TypeError, struct.error, orjson.JSONDecodeError) as exc:
            raise InvalidPolicy(f"a damaged {KIND} model: {exc}") from None


def _looks_like(raw: bytes) -> str:
    head = raw[:200].lstrip()
    if head.startswith(b"{"):
        return "it is JSON: a thompson or static model?"
    if b"cb_explore_adf" in raw[:4096] or raw[:4] in (b"\x06\x00\x00\x00", b"\x07\x00\x00\x00"):
        return "it looks like a VW model"
    return "unrecognised content"


def floor_for(n_examples: int, arms: int, min_arm_share: float) -> float:
    """Uniform before any evidence, shrinking as 1 / sqrt(n); never below min_arm_share."""
    return max(min_arm_share, 1.0 / (arms * math.sqrt(1.0 + n_examples)))


def _normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


_NORMALS: dict[int, np.ndarray] = {}


def standard_normals(arms: int) -> np.ndarray:
    """DRAWS x arms standard normals, the same in every process (fixed seed per width)."""
    draws = _NORMALS.get(arms)
    if draws is None:
        draws = np.random.default_rng([SEED, arms]).standard_normal((DRAWS, arms))
        _NORMALS[arms] = draws
    return draws


def win_probabilities(means: np.ndarray, deviations: np.ndarray) -> list[float]:
    """P(arm has the highest draw), as plain floats: exact for two arms, else from draws."""
    k = means.size
    if k == 2:
        spread = math.hypot(float(deviations[0]), float(deviations[1]))
        gap = float(means[0] - means[1])
        first = (
            0.5
            if spread == 0 and gap == 0
            else _normal_cdf(gap / spread)
            if spread
            else float(gap > 0)
        )
        return [first, 1.0 - first]
    samples = means + deviations * standard_normals(k)
    wins = np.bincount(samples.argmax(axis=1), minlength=k).astype(float)
    return [float(w) / DRAWS for w in wins]
