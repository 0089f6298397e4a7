"""The off-policy check of a model published by hand, before it serves.

A model from outside the trainer (`banditgate policy publish`, `banditgate train
--from`, the API's publish and activate) never passed the trainer's gate. So it is
scored with the serving policy on the experiment's most recent joined examples
(up to `RECENT_EXAMPLES`, those logged with a probability below 1): IPS, SNIPS and DR values with 95% intervals for both,
and the paired difference candidate - current. It is refused when it is
significantly worse: the whole interval of the difference, by the spec's gate
estimator (DR for SNIPS, which has no paired form), lies below 0. With fewer
examples than the gate's `min_examples` it cannot be judged, and is let through
with that said; with `policy.gate.enabled: false` it is judged and never refused.

DR's reward model here is each arm's mean reward on the same examples (shrunk
toward the overall mean by one example): DR stays unbiased whatever the model, as
the logged propensities are exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import orjson

from banditgate import keys
from banditgate.errors import Conflict
from banditgate.events import decode_joined
from banditgate.logged import Example, to_example
from banditgate.ope import GATE_INTERVAL, PAIRED_INTERVAL, Bounds, all_estimates, paired_difference
from banditgate.policy import Policy
from banditgate.redis import Redis
from banditgate.spec import ExperimentSpec

RECENT_EXAMPLES = 5_000
PAIRED = ("ips", "dr")


@dataclass
class Evaluation:
    """The numbers, and what they decide."""

    n: int
    estimator: str
    numbers: dict[str, Any]
    refused: bool
    reason: str
    current_version: int

    def report(self) -> str:
        """The estimates as a small table, for people (CLI output, error messages)."""
        lines = [
            f"off-policy estimates on the last {self.n} joined examples "
            f"(candidate against serving version {self.current_version}, 95% intervals):"
        ]
        if self.n == 0:
            return lines[0] + " none yet"
        lines.append(f"  {'':5} {'candidate':>26} {'serving':>26} {'candidate - serving':>28}")
        for name in ("ips", "snips", "dr"):
            difference = self.numbers["difference"].get(name)
            lines.append(
                f"  {name:5} {_fmt(self.numbers['candidate'][name]):>26} "
                f"{_fmt(self.numbers['current'][name]):>26} "
                f"{_fmt(difference, signed=True) if difference else '-':>28}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "estimator": self.estimator,
            "refused": self.refused,
            "reason": self.reason,
            "current_version": self.current_version,
            "report": self.report(),
            "numbers": self.numbers,
        }


class PolicyRefused(Conflict):
    """A hand-published model is significantly worse than the serving policy (409)."""

    def __init__(self, evaluation: Evaluation) -> None:
        super().__init__(
            f"refused: {evaluation.reason}; publish with force (CLI --force) to serve it anyway\n"
            + evaluation.report()
        )
        self.evaluation = evaluation

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        body["error"]["ope"] = orjson.loads(orjson.dumps(self.evaluation.to_dict()))
        return body


async def recent_examples(
    redis: Redis, spec: ExperimentSpec, limit: int = RECENT_EXAMPLES
) -> list[Example]:
    """The newest randomized joined examples of the experiment (logged p < 1), oldest first."""
    entries = cast(
        list[tuple[bytes, dict[bytes, bytes]]],
        await redis.xrevrange(keys.joined(spec.name), count=limit),
    )
    examples: list[Example] = []
    for _, fields in reversed(entries):
        if not fields:
            continue
        try:
            example = to_example(decode_joined(fields), spec)
        except (KeyError, ValueError, TypeError, orjson.JSONDecodeError):
            continue
        # A decision logged with p = 1 (an arm pinned by the client, or a canary's
        # baseline) says nothing about the other arms: it would pull both policies'
        # estimates toward whatever they give that arm.
        if example is not None and example.logged_prob < 1.0:
            examples.append(example)
    return examples


def _reward_model(examples: Sequence[Example]) -> dict[str, float]:
    overall = float(np.mean([e.reward for e in examples]))
    sums: dict[str, list[float]] = {}
    for example in examples:
        total = sums.setdefault(example.actions.names[example.chosen], [0.0, 0.0])
        total[0] += example.reward
        total[1] += 1.0
    return {arm: (s + overall) / (n + 1.0) for arm, (s, n) in sums.items()} | {"": overall}


def evaluate(
    spec: ExperimentSpec,
    candidate: Policy,
    current: Policy,
    examples: Sequence[Example],
    *,
    current_version: int = 0,
) -> Evaluation:
    """Score `candidate` and `current` on `examples` and decide as the module says."""
    gate = spec.policy.gate
    estimator = gate.estimator if gate.estimator in PAIRED else "dr"
    n = len(examples)
    if n == 0:
        return Evaluation(
            0, estimator, {}, False, "no joined examples to judge it on", current_version
        )
    rhat = _reward_model(examples)
    columns: dict[str, list[float]] = {
        k: [] for k in ("r", "p", "qa", "qb", "rhat", "rhat_a", "rhat_b")
    }
    for example in examples:
        names = example.actions.names
        values = [rhat.get(name, rhat[""]) for name in names]
        pmf_a = candidate.probabilities(example.context, example.actions)
        pmf_b = current.probabilities(example.context, example.actions)
        chosen = example.chosen
        columns["r"].append(example.reward)
        columns["p"].append(example.logged_prob)
        columns["qa"].append(pmf_a[chosen])
        columns["qb"].append(pmf_b[chosen])
        columns["rhat"].append(values[chosen])
        columns["rhat_a"].append(float(np.dot(values, pmf_a)))
        columns["rhat_b"].append(float(np.dot(values, pmf_b)))
    r, p, qa, qb, rh, rha, rhb = (np.array(columns[k]) for k in columns)
    bounds = Bounds(wmax=float(1.0 / p.min()), rmin=float(r.min()), rmax=float(r.max()))
    numbers: dict[str, Any] = {
        "candidate": all_estimates(r, p, qa, rh, rha, intervals=GATE_INTERVAL, bounds=bounds),
        "current": all_estimates(r, p, qb, rh, rhb, intervals=GATE_INTERVAL, bounds=bounds),
        "difference": {
            "ips": paired_difference(
                r, p, qa, qb, interval=PAIRED_INTERVAL, bounds=bounds
            ).to_dict(),
            "dr": paired_difference(
                r, p, qa, qb, rh, rha, rhb, interval=PAIRED_INTERVAL, bounds=bounds
            ).to_dict(),
        },
        "logged": {"mean_reward": {"value": float(r.mean()), "n": n}},
    }
    difference = numbers["difference"][estimator]
    value, lo, hi = difference["value"], difference["lo"], difference["hi"]
    summary = f"candidate - serving {estimator} = {_num(value)} [{_num(lo)}, {_num(hi)}]"
    if n < gate.min_examples:
        reason = f"{n} joined examples, fewer than the {gate.min_examples} needed to judge it"
        return Evaluation(n, estimator, numbers, False, reason, current_version)
    worse = hi is not None and hi < 0
    if worse and gate.enabled:
        reason = f"significantly worse than the serving policy: {summary}, all below 0"
        return Evaluation(n, estimator, numbers, True, reason, current_version)
    if worse:
        reason = f"significantly worse ({summary}), but policy.gate.enabled is false"
    else:
        reason = f"not significantly worse than the serving policy: {summary}"
    return Evaluation(n, estimator, numbers, False, reason, current_version)


def _fmt(estimate: dict[str, Any] | None, *, signed: bool = False) -> str:
    if not estimate:
        return "-"
    value, lo, hi = estimate.get("value"), estimate.get("lo"), estimate.get("hi")
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{_num(value, signed)} [{_num(lo, signed)}, {_num(hi, signed)}]"


def _num(value: float | None, signed: bool = True) -> str:
    """None is what an infinite bound becomes in the numbers (Estimate.to_dict)."""
    if value is None or not math.isfinite(value):
        return "unbounded"
    return f"{value:+.4f}" if signed else f"{value:.4f}"
