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

Change (trainer/change.py): every example also feeds a detector per arm and context
cell. When it fires at an update, the loop forgets: the learner restarts from the
examples since the change (older ones kept with probability discount^age), with
wider exploration for `explore_events` examples, and a fresh challenger is judged on
data from after the detection only, so the old data cannot hold it back. The
detection is recorded, and named in the lineage of the next published policy.

With `learner: auto` (trainer.learner.AutoLearner) every candidate learner learns
every example and has its own challenger, scored on the same examples; at each
update the gate judges each one against the serving policy, and the best of those
that pass (by the estimated difference) is published, named with every candidate's
numbers in the record. After a change the widened VW restart is what ships.

The worker (`trainer/worker.py`), the screening simulation (`bench/learning_sim.py`)
and the world suite (`bench/worlds`) all run this class.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from banditgate.auto import AUTO, concrete
from banditgate.policy import Policy, build_policy
from banditgate.spec import ExperimentSpec
from trainer.change import Alarm, ChangeDetector
from trainer.gate import EvaluationWindow, judge
from trainer.learner import AutoLearner, Example, Learner, VWLearner, expected, new_learner

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
        self.challengers: dict[str, Challenger] = {}
        self.windows: dict[str, EvaluationWindow] = {}
        self.since_update = 0
        change = spec.policy.change
        self.detector = ChangeDetector(change, spec.reward.min, spec.reward.max)
        self.recent: deque[tuple[int, Example]] = deque(maxlen=change.memory)
        self.seen = 0  # examples observed (the learner's own count restarts on a change)
        self.widen_left = 0
        self.change_since = 0
        self.changes: list[dict[str, Any]] = []  # detections since the last publish
        self.known_arms: set[str] = set()
        self.new_arms: list[str] = []  # arms first seen since the last update

    def _members(self) -> dict[str, Learner]:
        if isinstance(self.learner, AutoLearner):
            return self.learner.members
        return {self.learner.kind: self.learner}

    @property
    def challenger(self) -> Challenger | None:
        """The challenger of a single learner (with `auto`: the VW one)."""
        return self.challengers.get(self._lead)

    @property
    def window(self) -> EvaluationWindow:
        return self.windows.setdefault(self._lead, EvaluationWindow())

    @window.setter
    def window(self, window: EvaluationWindow) -> None:
        self.windows[self._lead] = window

    @property
    def _lead(self) -> str:
        """The learner that ships a restart after a change (the widened VW one under auto)."""
        return "vw" if self.spec.policy.learner == AUTO else self.learner.kind

    def observe(self, example: Example) -> None:
        """Score the example with the challenger and the serving policy, then learn it."""
        if self.challengers:
            # Both as served (the floor is part of a learned policy), as routers log them.
            current = self.serving.probabilities(example.context, example.actions)
            reward_hat = self.learner.reward_estimates(example)
            current_reward_hat = expected(reward_hat, current)
            chosen = example.chosen
            for kind, snapshot in self.challengers.items():
                challenger = snapshot.policy.probabilities(example.context, example.actions)
                self.window_of(kind).add(
                    reward=example.reward,
                    logged_prob=example.logged_prob,
                    candidate_prob=challenger[chosen],
                    current_prob=current[chosen],
                    reward_hat_logged=reward_hat[chosen],
                    candidate_reward_hat=expected(reward_hat, challenger),
                    current_reward_hat=current_reward_hat,
                )
        self.seen += 1
        arm = example.actions.names[example.chosen]
        if not self.known_arms.issuperset(example.actions.names):
            # Only the spec's arms: callers of the rank route may send actions of their own.
            spec_arms = set(self.spec.arm_names)
            if self.known_arms:
                self.new_arms += [
                    n for n in example.actions.names if n not in self.known_arms and n in spec_arms
                ]
            self.known_arms.update(example.actions.names)
        if example.rewarded:
            # Defaults join a window late, so their share of an arm's joined stream follows
            # the traffic of a window ago: watching them would see changes in the policy.
            self.detector.add(arm, example.context, example.reward, self.seen)
        if self.recent.maxlen:
            self.recent.append((self.seen, example))
        self.learner.learn(example)
        self.since_update += 1
        if self.widen_left > 0:
            self.widen_left -= 1
            if self.widen_left == 0:
                self._narrow()

    def due(self, seconds_since_update: float) -> bool:
        update = self.spec.policy.update
        return self.since_update >= update.every_events or (
            self.since_update > 0 and seconds_since_update >= update.every_s
        )

    def update(self, publishable: bool = True) -> Outcome:
        """Judge the challenger (or take a first one). Call when `due`."""
        self.since_update = 0
        spec = self.spec
        self.detector.spec = spec.policy.change
        alarms = self.detector.check()
        if alarms:
            self.new_arms.clear()
            return self._on_change(alarms, publishable)
        if self.new_arms and self.serving_version > 0:
            return self._on_new_arms(publishable)
        warmup = spec.policy.update.warmup_events
        if self.serving_version == 0 and self.learner.n_examples < warmup:
            reason = (
                f"warming up: {self.learner.n_examples} of {warmup} examples before a first policy"
            )
            return Outcome(False, None, {"decision": "waiting", "reason": reason, "n": 0})
        if not self.challengers:
            self._take_snapshot()
            return Outcome(
                False, None, {"decision": "challenger", "reason": "new challenger", "n": 0}
            )
        gate = spec.policy.gate
        judged = {}
        for kind in self.challengers:
            window = self.window_of(kind)
            numbers = window.estimates()
            judged[kind] = (len(window), numbers, judge(gate, numbers, len(window)))

        def gain(kind: str) -> float:
            value = judged[kind][1].get("difference", {}).get(gate.estimator, {}).get("value")
            return value if value is not None and math.isfinite(value) else -math.inf

        passed = [kind for kind, (_, _, verdict) in judged.items() if verdict.publish]
        best = max(passed or list(judged), key=gain)
        n, numbers, verdict = judged[best]
        record: dict[str, Any] = {
            "n": n,
            "challenger_examples": self.challengers[best].examples,
            "examples_seen": self.learner.n_examples,
            "current_version": self.serving_version,
            "rule": gate.model_dump(),
            "numbers": numbers,
            "reason": verdict.reason,
            "learner": best,
        }
        if len(judged) > 1:
            record["candidates"] = {
                kind: {
                    "n": k_n,
                    "gain": k_numbers.get("difference", {}).get(gate.estimator),
                    "passed": k_verdict.publish,
                    "reason": k_verdict.reason,
                }
                for kind, (k_n, k_numbers, k_verdict) in judged.items()
            }
            gains = ", ".join(
                f"{kind} {gain(kind):+.4f}" for kind in judged if math.isfinite(gain(kind))
            )
            record["reason"] = f"{best} is the best candidate ({gate.estimator} gain: {gains}); "
            record["reason"] += verdict.reason
        if verdict.publish and publishable:
            model = self.challengers[best].model
            record["decision"] = "published"
            if self.changes:
                record["changes"] = list(self.changes)
            return Outcome(True, model, record)
        if not publishable:
            record["reason"] = f"mode {spec.mode!r} does not publish; {record['reason']}"
        record["decision"] = "rejected"
        for kind, (k_n, k_numbers, _) in judged.items():
            if self._hopeless(k_numbers, k_n) or self._stale(kind):
                record["reason"] += (
                    "; replaced by a fresh challenger"
                    if len(judged) == 1
                    else f"; the {kind} challenger replaced by a fresh one"
                )
                self._take_snapshot(kind)
        return Outcome(False, None, record)

    def window_of(self, kind: str) -> EvaluationWindow:
        return self.windows.setdefault(kind, EvaluationWindow())

    def published(self, policy: Policy, version: int) -> None:
        """The challenger now serves; the learner's current state becomes the next challenger."""
        self.serving = policy
        self.serving_version = version
        self.changes.clear()
        self._take_snapshot()

    def serving_changed(self, policy: Policy, version: int) -> None:
        """Routers serve something else (a rollback, a manual publish): judge against that."""
        self.serving = policy
        self.serving_version = version
        for window in self.windows.values():
            window.clear()

    def _hopeless(self, numbers: dict[str, Any], n: int) -> bool:
        gate = self.spec.policy.gate
        diff = numbers.get("difference", {}).get(gate.estimator) or {}
        hi = diff.get("hi")
        clearly_worse = n >= gate.min_examples and hi is not None and math.isfinite(hi) and hi < 0
        return clearly_worse or n >= MAX_EVIDENCE_FACTOR * max(gate.min_examples, 1)

    def _stale(self, kind: str) -> bool:
        """Early on the learner improves fast: a snapshot of its first few hundred examples
        that the gate cannot decide on would otherwise be judged for 5x the minimum while
        a much better learner waits (seen in short demos that ended before any publish)."""
        snapshot = self.challengers[kind].examples
        learned_since = self._members()[kind].n_examples - snapshot
        return learned_since >= max(snapshot, self.spec.policy.gate.min_examples)

    def _on_change(self, alarms: list[Alarm], publishable: bool) -> Outcome:
        record = self._forget(alarms)
        if publishable and self.serving_version > 0:
            # The gate cannot judge a move to arms the serving policy hardly logs, and the
            # serving policy would keep them starved: the widened restart ships as is.
            lead = self.challengers[self._lead]
            record["decision"] = "published"
            record["changes"] = list(self.changes)
            record["challenger_examples"] = lead.examples
            record["learner"] = self._lead
            return Outcome(True, lead.model, record)
        return Outcome(False, None, record)

    def _on_new_arms(self, publishable: bool) -> Outcome:
        """An arm was added: relearn everything remembered, exploring wider for a while.

        Nothing is forgotten, but a learned policy would give a new arm only its floor:
        the wider exploration is what lets it show what it earns."""
        arms, self.new_arms = self.new_arms, []
        self.change_since = self.recent[0][0] if self.recent else self.seen
        self.widen_left = self.spec.policy.change.explore_events
        self._relearn([example for _, example in self.recent], widen=self.widen_left > 0)
        self._take_snapshot()
        lead = self.challengers[self._lead]
        detection = {
            "examples_seen": self.seen,
            "arms_added": arms,
            "alarms": [],
            "relearned": len(self.recent),
            "explore_events": self.widen_left,
        }
        self.changes.append(detection)
        record: dict[str, Any] = {
            "decision": "change",
            "reason": f"arms added: {', '.join(arms)}; exploring wider for "
            f"{self.widen_left} examples",
            "n": 0,
            "change": detection,
            "current_version": self.serving_version,
        }
        if publishable and self.widen_left > 0:
            record["decision"] = "published"
            record["changes"] = list(self.changes)
            record["challenger_examples"] = lead.examples
            record["learner"] = self._lead
            return Outcome(True, lead.model, record)
        return Outcome(False, None, record)

    def _forget(self, alarms: list[Alarm]) -> dict[str, Any]:
        """Restart the learner from the examples since the change, exploring wider for a while."""
        change = self.spec.policy.change
        since = min(alarm.since for alarm in alarms)
        rng = random.Random(since)
        kept = [
            example
            for index, example in self.recent
            if index >= since or rng.random() < change.discount ** (since - index)
        ]
        self.change_since = since
        self.widen_left = change.explore_events
        self._relearn(kept, widen=self.widen_left > 0)
        self._take_snapshot()
        detection = {
            "examples_seen": self.seen,
            "alarms": [alarm.to_dict() for alarm in alarms],
            "relearned": len(kept),
            "explore_events": self.widen_left,
        }
        self.changes.append(detection)
        arms = ", ".join(
            f"{a.arm} {a.before:.3f} -> {a.after:.3f} (z {a.z:+.1f})" for a in alarms[:3]
        )
        reason = (
            f"change detected: {arms}; the learner restarts from {len(kept)} recent examples"
            + (f", exploring wider for {self.widen_left} examples" if self.widen_left else "")
        )
        return {
            "decision": "change",
            "reason": reason,
            "n": 0,
            "change": detection,
            "current_version": self.serving_version,
        }

    def _narrow(self) -> None:
        """The end of widened exploration: relearn the examples since the change, as specified."""
        kept = [example for index, example in self.recent if index >= self.change_since]
        self._relearn(kept, widen=False)
        self._take_snapshot()

    def _relearn(self, examples: list[Example], *, widen: bool) -> None:
        learner: Learner
        if self.spec.policy.learner == AUTO:
            learner = AutoLearner(
                {kind: self._fresh(kind, widen=widen) for kind in self._members()}
            )
        else:
            learner = self._fresh(self.spec.policy.learner, widen=widen)
        for example in examples:
            learner.learn(example)
        self.learner = learner

    def _fresh(self, kind: str, *, widen: bool) -> Learner:
        spec = concrete(self.spec, kind)
        exploration = spec.policy.exploration
        wider = spec.policy.change.explore_epsilon
        if (
            widen
            and spec.policy.learner == "vw"
            and exploration.type in ("epsilon", "bag")
            and exploration.epsilon < wider
        ):
            policy = spec.policy.model_copy(
                update={"exploration": exploration.model_copy(update={"epsilon": wider})}
            )
            spec = spec.model_copy(update={"policy": policy})
        if spec.policy.learner == "vw":
            # A fresh VW policy estimates every arm at reward 0 and climbs toward the truth
            # as it learns, fastest on the arm with the most data: right after a change that
            # is the arm that changed, which would then look best. From the middle of the
            # reward range instead, an arm with little data is neither favoured nor starved.
            reward = spec.reward
            return VWLearner(spec.policy, cost_offset=(reward.min + reward.max) / 2)
        return new_learner(spec)

    def _take_snapshot(self, only: str | None = None) -> None:
        """Fresh challengers: of every learner, or of `only`."""
        for kind, member in self._members().items():
            if only is not None and kind != only:
                continue
            model = member.model_bytes()
            policy = build_policy(concrete(self.spec, kind), model, version=-1)
            self.challengers[kind] = Challenger(policy, model, member.n_examples)
            self.windows[kind] = EvaluationWindow()
