"""One experiment's learning loop, without I/O: learn, challenge, judge.

The learner learns every example. Publishing works on a *challenger*: a frozen
snapshot of the learner. Each new example is scored by the challenger and by the
serving policy before the learner learns from it, so the gate's numbers are for
exactly the model that would ship, on data it has never seen (the learner keeps
improving meanwhile). At each update the gate judges the challenger on that
evidence:

- it passes: the challenger is published, and a new snapshot becomes the challenger;
- it is significantly worse than the serving policy (the whole interval of the
  difference lies below 0: it can only pass by chance), or undecided after
  `MAX_EVIDENCE_FACTOR` x the gate's minimum, or undecided and stale (the learner
  has learned at least as many examples again since the snapshot, and the gate's
  minimum more): it is replaced by a fresh snapshot, which has learned from
  everything the old one was judged on;
- otherwise it keeps collecting evidence.

The worker (`trainer/worker.py`) and the screening simulation
(`bench/learning_sim.py`) both run this class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from banditgate.policy import Policy, build_policy
from banditgate.spec import ExperimentSpec
from trainer.gate import EvaluationWindow, judge
from trainer.learner import Example, Learner, expected

MAX_EVIDENCE_FACTOR = 5


@dataclass
class Challenger:
    policy: Policy
    model: bytes
    examples: int  # how many examples the snapshot had learned


@dataclass
class Outcome:
    """What one update decided, with the numbers that decided it."""

    publish: bool
    model: bytes | None
    record: dict[str, Any] = field(default_factory=dict)


class TrainingLoop:
    def __init__(
        self, spec: ExperimentSpec, learner: Learner, serving: Policy, serving_version: int
    ) -> None:
        self.spec = spec
        self.learner = learner
        self.serving = serving
        self.serving_version = serving_version
        self.challenger: Challenger | None = None
        self.window = EvaluationWindow()
        self.since_update = 0

    def observe(self, example: Example) -> None:
        """Score the example with the challenger and the serving policy, then learn it."""
        if self.challenger is not None:
            # Both as served (the floor is part of a learned policy), as routers log them.
            challenger = self.challenger.policy.probabilities(example.context, example.actions)
            current = self.serving.probabilities(example.context, example.actions)
            reward_hat = self.learner.reward_estimates(example)
            chosen = example.chosen
            self.window.add(
                reward=example.reward,
                logged_prob=example.logged_prob,
                candidate_prob=challenger[chosen],
                current_prob=current[chosen],
                reward_hat_logged=reward_hat[chosen],
                candidate_reward_hat=expected(reward_hat, challenger),
                current_reward_hat=expected(reward_hat, current),
            )
        self.learner.learn(example)
        self.since_update += 1

    def due(self, seconds_since_update: float) -> bool:
        update = self.spec.policy.update
        return self.since_update >= update.every_events or (
            self.since_update > 0 and seconds_since_update >= update.every_s
        )

    def update(self, publishable: bool = True) -> Outcome:
        """Judge the challenger (or take a first one). Call when `due`."""
        self.since_update = 0
        spec = self.spec
        warmup = spec.policy.update.warmup_events
        if self.serving_version == 0 and self.learner.n_examples < warmup:
            reason = (
                f"warming up: {self.learner.n_examples} of {warmup} examples before a first policy"
            )
            return Outcome(False, None, {"decision": "waiting", "reason": reason, "n": 0})
        if self.challenger is None:
            self._take_snapshot()
            return Outcome(
                False, None, {"decision": "challenger", "reason": "new challenger", "n": 0}
            )
        n = len(self.window)
        numbers = self.window.estimates()
        verdict = judge(spec.policy.gate, numbers, n)
        record: dict[str, Any] = {
            "n": n,
            "challenger_examples": self.challenger.examples,
            "examples_seen": self.learner.n_examples,
            "current_version": self.serving_version,
            "rule": spec.policy.gate.model_dump(),
            "numbers": numbers,
            "reason": verdict.reason,
        }
        if verdict.publish and publishable:
            model = self.challenger.model
            record["decision"] = "published"
            return Outcome(True, model, record)
        if not publishable:
            record["reason"] = f"mode {spec.mode!r} does not publish; {verdict.reason}"
        record["decision"] = "rejected"
        if self._hopeless(numbers, n) or self._stale():
            record["reason"] += "; replaced by a fresh challenger"
            self._take_snapshot()
        return Outcome(False, None, record)

    def published(self, policy: Policy, version: int) -> None:
        """The challenger now serves; the learner's current state becomes the next challenger."""
        self.serving = policy
        self.serving_version = version
        self._take_snapshot()

    def serving_changed(self, policy: Policy, version: int) -> None:
        """Routers serve something else (a rollback, a manual publish): judge against that."""
        self.serving = policy
        self.serving_version = version
        self.window.clear()

    def _hopeless(self, numbers: dict[str, Any], n: int) -> bool:
        gate = self.spec.policy.gate
        diff = numbers.get("difference", {}).get(gate.estimator) or {}
        hi = diff.get("hi")
        clearly_worse = n >= gate.min_examples and hi is not None and math.isfinite(hi) and hi < 0
        return clearly_worse or n >= MAX_EVIDENCE_FACTOR * max(gate.min_examples, 1)

    def _stale(self) -> bool:
        """Early on the learner improves fast: a snapshot of its first few hundred examples
        that the gate cannot decide on would otherwise be judged for 5x the minimum while
        a much better learner waits (seen in short demos that ended before any publish)."""
        assert self.challenger is not None
        snapshot = self.challenger.examples
        learned_since = self.learner.n_examples - snapshot
        return learned_since >= max(snapshot, self.spec.policy.gate.min_examples)

    def _take_snapshot(self) -> None:
        model = self.learner.model_bytes()
        policy = build_policy(self.spec, model, version=-1)
        self.challenger = Challenger(policy, model, self.learner.n_examples)
        self.window.clear()
