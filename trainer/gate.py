"""The off-policy gate: a candidate ships only if the numbers say it is at least as good."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from banditgate.spec import GateSpec
from trainer.ope import (
    GATE_INTERVAL,
    PAIRED_INTERVAL,
    Bounds,
    Estimate,
    all_estimates,
    paired_difference,
)


@dataclass
class EvaluationWindow:
    """Progressive-validation records: each example scored before it was learned from."""

    limit: int = 20_000
    rewards: list[float] = field(default_factory=list)
    logged_prob: list[float] = field(default_factory=list)
    candidate_prob: list[float] = field(default_factory=list)
    current_prob: list[float] = field(default_factory=list)
    reward_hat_logged: list[float] = field(default_factory=list)
    candidate_reward_hat: list[float] = field(default_factory=list)
    current_reward_hat: list[float] = field(default_factory=list)

    def add(
        self,
        *,
        reward: float,
        logged_prob: float,
        candidate_prob: float,
        current_prob: float,
        reward_hat_logged: float,
        candidate_reward_hat: float,
        current_reward_hat: float,
    ) -> None:
        self.rewards.append(reward)
        self.logged_prob.append(logged_prob)
        self.candidate_prob.append(candidate_prob)
        self.current_prob.append(current_prob)
        self.reward_hat_logged.append(reward_hat_logged)
        self.candidate_reward_hat.append(candidate_reward_hat)
        self.current_reward_hat.append(current_reward_hat)
        if len(self.rewards) > self.limit:
            for values in self._columns():
                del values[: len(values) - self.limit]

    def _columns(self) -> list[list[float]]:
        return [
            self.rewards,
            self.logged_prob,
            self.candidate_prob,
            self.current_prob,
            self.reward_hat_logged,
            self.candidate_reward_hat,
            self.current_reward_hat,
        ]

    def __len__(self) -> int:
        return len(self.rewards)

    def clear(self) -> None:
        for values in self._columns():
            values.clear()

    def estimates(self) -> dict[str, dict[str, dict[str, Any]]]:
        r = np.array(self.rewards)
        p = np.array(self.logged_prob)
        rhat = np.array(self.reward_hat_logged)
        q_candidate, q_current = np.array(self.candidate_prob), np.array(self.current_prob)
        rhat_candidate, rhat_current = (
            np.array(self.candidate_reward_hat),
            np.array(self.current_reward_hat),
        )
        # Intervals as measured to hold at small propensities (trainer.ope.GATE_INTERVAL).
        # Weights are at most 1 / the smallest logged propensity (the floor, which a
        # window of hundreds of examples holds); rewards' range as seen in the window.
        bounds = (
            Bounds(wmax=float(1.0 / p.min()), rmin=float(r.min()), rmax=float(r.max()))
            if r.size
            else None
        )
        paired = PAIRED_INTERVAL
        difference: dict[str, Estimate] = {
            "ips": paired_difference(r, p, q_candidate, q_current, interval=paired, bounds=bounds),
            "dr": paired_difference(
                r,
                p,
                q_candidate,
                q_current,
                rhat,
                rhat_candidate,
                rhat_current,
                interval=paired,
                bounds=bounds,
            ),
        }
        chosen = dict(GATE_INTERVAL)
        return {
            "candidate": all_estimates(
                r, p, q_candidate, rhat, rhat_candidate, intervals=chosen, bounds=bounds
            ),
            "current": all_estimates(
                r, p, q_current, rhat, rhat_current, intervals=chosen, bounds=bounds
            ),
            "difference": {name: est.to_dict() for name, est in difference.items()},
            "logged": {
                "mean_reward": {"value": float(r.mean()) if r.size else None, "n": int(r.size)}
            },
        }


@dataclass
class Verdict:
    publish: bool
    reason: str


def _interval(numbers: dict[str, Any]) -> str:
    return f" ({numbers.get('interval', 'normal')} interval)"


def judge(gate: GateSpec, numbers: dict[str, dict[str, dict[str, Any]]], n: int) -> Verdict:
    """Enough examples, and the candidate at least as good as the current policy minus a margin.

    `paired` (default): the 95% lower bound of the per-example difference
    candidate - current is at least -margin. Both policies are scored on the same
    examples, so the difference has a far narrower interval than either value.
    `unpaired`: the candidate's own lower bound is at least the current estimate
    minus the margin (needs thousands of examples per update for 0/1 rewards).
    """
    if not gate.enabled:
        return Verdict(True, "gate disabled")
    if n < gate.min_examples:
        return Verdict(False, f"{n} examples; the gate needs {gate.min_examples}")
    if gate.rule == "paired" and gate.estimator in numbers.get("difference", {}):
        diff = numbers["difference"][gate.estimator]
        lo, value = diff.get("lo"), diff.get("value")
        if lo is None or value is None or not math.isfinite(lo):
            return Verdict(False, f"{gate.estimator} difference is not finite yet")
        if lo >= -gate.margin:
            return Verdict(
                True,
                f"candidate - current {gate.estimator} = {value:+.4f}, lower bound {lo:+.4f} >= -{gate.margin:g}"
                + _interval(diff),
            )
        return Verdict(
            False,
            f"candidate - current {gate.estimator} = {value:+.4f}, lower bound {lo:+.4f} < -{gate.margin:g}"
            + _interval(diff),
        )
    candidate = numbers["candidate"][gate.estimator]
    current = numbers["current"][gate.estimator]
    lo, value = candidate.get("lo"), current.get("value")
    if lo is None or value is None or not (math.isfinite(lo) and math.isfinite(value)):
        return Verdict(False, f"{gate.estimator} estimates are not finite yet")
    bar = value - gate.margin
    if lo >= bar:
        return Verdict(
            True,
            f"candidate {gate.estimator} lower bound {lo:.4f} >= current {value:.4f} - margin {gate.margin:g}"
            + _interval(candidate),
        )
    return Verdict(
        False,
        f"candidate {gate.estimator} lower bound {lo:.4f} < current {value:.4f} - margin {gate.margin:g}",
    )
