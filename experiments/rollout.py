"""The canary and blue/green state machine: pure functions of state, plan, clock and metrics.

Nothing here touches Redis or reads a clock. The controller (and the API, for
manual actions) loads a state, calls these functions with `now` (seconds, its
clock) and `mark_ms` (the streams' clock, where a fresh metrics window starts),
and stores what comes back.

Canary: Progressing through the steps; at each interval the guardrails compare
canary and baseline over the step's window. A breach rolls back to 0 %; too
little traffic pauses (not a failure) and the step is judged again, on the
accumulated window, an interval later; when the last step passes the canary is
promoted and becomes the baseline. When the baseline gets no traffic (a 100 %
step) it is judged against the baseline's numbers from the last step that had them.

Blue/green: Pending (preview reachable with the target-variant header only)
until a switch moves all traffic to the preview; a bake follows, judged
against the active arm's traffic from before the switch. A breach switches
back; a clean bake promotes, and the old arm stays available for an instant
manual rollback until `termination_wait_s` has passed after the promotion.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from banditgate.errors import Conflict
from banditgate.spec import ExperimentSpec, Guardrails
from experiments.guardrails import ArmMetrics, judge

Phase = Literal["Pending", "Progressing", "Paused", "Promoted", "RolledBack", "Static", "Learning"]
Action = Literal["pause", "resume", "promote", "abort", "switch", "rollback", "restart"]

ACTIONS: tuple[Action, ...] = (
    "pause",
    "resume",
    "promote",
    "abort",
    "switch",
    "rollback",
    "restart",
)
ACTIVE: frozenset[str] = frozenset({"Pending", "Progressing", "Paused"})
HISTORY_LIMIT = 200
# Blue/green judges the bake against the active arm's traffic of this long before the switch.
MIN_REFERENCE_S = 60.0


class RolloutConflict(Conflict):
    """An action that the rollout's phase does not allow (409)."""


@dataclass(frozen=True)
class Plan:
    mode: Literal["canary", "bluegreen"]
    baseline: str  # canary: baseline; blue/green: active
    candidate: str  # canary: canary; blue/green: preview
    steps: tuple[float, ...]
    interval_s: float  # canary: the step interval; blue/green: how often the bake is judged
    bake_s: float
    termination_wait_s: float
    guardrails: Guardrails

    @classmethod
    def from_spec(cls, spec: ExperimentSpec) -> Plan | None:
        if spec.mode == "canary" and spec.canary is not None:
            c = spec.canary
            return cls(
                "canary", c.baseline, c.canary, tuple(c.steps), c.interval_s, 0.0, 0.0, c.guardrails
            )
        if spec.mode == "bluegreen" and spec.bluegreen is not None:
            b = spec.bluegreen
            check = min(max(b.bake_s / 5, 1.0), 30.0)
            return cls(
                "bluegreen",
                b.active,
                b.preview,
                (),
                check,
                b.bake_s,
                b.termination_wait_s,
                b.guardrails,
            )
        return None

    @property
    def target(self) -> tuple[str, str]:
        return self.baseline, self.candidate

    def step_weights(self, step: int) -> dict[str, float]:
        share = self.steps[step]
        return {self.baseline: 100.0 - share, self.candidate: share}

    @property
    def on_baseline(self) -> dict[str, float]:
        return {self.baseline: 100.0, self.candidate: 0.0}

    @property
    def on_candidate(self) -> dict[str, float]:
        return {self.baseline: 0.0, self.candidate: 100.0}


@dataclass
class RolloutState:
    mode: str
    phase: Phase
    weights: dict[str, float]
    baseline: str | None = None
    candidate: str | None = None
    step: int = 0
    message: str = ""
    paused_by: Literal["manual", "traffic"] | None = None
    paused_from: Phase | None = None
    due_s: float | None = None  # when the guardrails judge next
    window_from_ms: int | None = None  # the judged window starts here (streams' clock)
    reference: dict[str, Any] | None = None  # baseline metrics for windows where it has no traffic
    reference_range_ms: list[int] | None = None  # blue/green: where to take them from
    switched_s: float | None = None
    release_s: float | None = None
    released: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Window:
    """What the controller must measure before `evaluate` can run."""

    since_ms: int
    reference_range_ms: tuple[int, int] | None = None


def _moved(
    state: RolloutState,
    now: float,
    phase: Phase,
    weights: dict[str, float],
    reason: str,
    **changes: Any,
) -> RolloutState:
    """A new state and a history entry: every phase or weights change is kept with its reason."""
    new = copy.deepcopy(state)
    new.phase = phase
    new.weights = dict(weights)
    new.message = reason
    for name, value in changes.items():
        setattr(new, name, value)
    new.history.append(
        {"ts_ms": int(now * 1000), "phase": phase, "weights": dict(weights), "reason": reason}
    )
    del new.history[:-HISTORY_LIMIT]
    return new


def _wait_for_traffic(state: RolloutState, now: float, plan: Plan, why: str) -> RolloutState:
    """Too little traffic is not a failure: pause (or stay paused) and look again next interval."""
    message = f"{why}; paused until there is enough"
    if state.phase == "Paused":
        return _quietly(state, message=message, due_s=now + plan.interval_s)
    return _moved(
        state,
        now,
        "Paused",
        state.weights,
        message,
        paused_by="traffic",
        paused_from="Progressing",
        due_s=now + plan.interval_s,
    )


def _quietly(state: RolloutState, **changes: Any) -> RolloutState:
    new = copy.deepcopy(state)
    for name, value in changes.items():
        setattr(new, name, value)
    return new


def _pct(share: float) -> str:
    return f"{share:g}%"


def initial(
    plan: Plan, *, now: float, mark_ms: int, history: list[dict[str, Any]] | None = None
) -> RolloutState:
    blank = RolloutState(
        mode=plan.mode,
        phase="Pending",
        weights={},
        baseline=plan.baseline,
        candidate=plan.candidate,
        history=list(history or []),
    )
    if plan.mode == "canary":
        return _moved(
            blank,
            now,
            "Progressing",
            plan.step_weights(0),
            f"canary started: step 1/{len(plan.steps)}, {_pct(plan.steps[0])} to {plan.candidate}",
            step=0,
            due_s=now + plan.interval_s,
            window_from_ms=mark_ms,
        )
    return _moved(
        blank,
        now,
        "Pending",
        plan.on_baseline,
        f"{plan.candidate} is in preview (reachable with the target-variant header); "
        f"{plan.baseline} serves all traffic until a switch",
    )


def current(state: RolloutState | None, plan: Plan) -> bool:
    """Whether `state` is the rollout of this plan's target (not of an earlier spec)."""
    return (
        state is not None
        and state.mode == plan.mode
        and (state.baseline, state.candidate) == plan.target
    )


def reconcile(state: RolloutState | None, plan: Plan, *, now: float, mark_ms: int) -> RolloutState:
    """Start the rollout of the spec's target, unless it is the one already under way."""
    if state is None or not current(state, plan):
        return initial(plan, now=now, mark_ms=mark_ms, history=state.history if state else None)
    if plan.mode == "canary" and state.step >= len(plan.steps):
        return _quietly(state, step=len(plan.steps) - 1)
    return state


def due(state: RolloutState, plan: Plan, now: float) -> Window | None:
    judging = state.phase == "Progressing" or (
        state.phase == "Paused" and state.paused_by == "traffic"
    )
    if not judging or state.due_s is None or now < state.due_s or state.window_from_ms is None:
        return None
    reference = None
    if state.reference is None and state.reference_range_ms is not None:
        low, high = state.reference_range_ms
        reference = (low, high)
    return Window(state.window_from_ms, reference)


def evaluate(
    state: RolloutState,
    plan: Plan,
    *,
    now: float,
    mark_ms: int,
    window: Mapping[str, ArmMetrics],
    reference: Mapping[str, ArmMetrics] | None = None,
) -> RolloutState:
    """Judge the window that `due` asked for: next step, promotion, rollback or a pause."""
    if plan.mode == "canary":
        return _evaluate_canary(state, plan, now, mark_ms, window)
    return _evaluate_bake(state, plan, now, window, reference)


def _evaluate_canary(
    state: RolloutState, plan: Plan, now: float, mark_ms: int, window: Mapping[str, ArmMetrics]
) -> RolloutState:
    g = plan.guardrails
    step, steps = state.step, len(plan.steps)
    label = f"step {step + 1}/{steps} ({_pct(plan.steps[step])} to {plan.candidate})"
    observed = window.get(plan.baseline, ArmMetrics())
    baseline = observed
    if observed.requests < g.min_samples and state.reference is not None:
        baseline = ArmMetrics.from_dict(state.reference)
    verdict = judge(
        baseline,
        window.get(plan.candidate),
        g,
        baseline_name=plan.baseline,
        candidate_name=plan.candidate,
    )
    if verdict.outcome == "breach":
        return _moved(
            state,
            now,
            "RolledBack",
            plan.on_baseline,
            f"{label}: {verdict.reason}; rolled back to 0%",
            due_s=None,
            paused_by=None,
            paused_from=None,
        )
    if verdict.outcome == "insufficient":
        return _wait_for_traffic(state, now, plan, f"{label}: {verdict.reason}")
    reference = observed.to_dict() if observed.requests >= g.min_samples else state.reference
    if step + 1 < steps:
        nxt = step + 1
        return _moved(
            state,
            now,
            "Progressing",
            plan.step_weights(nxt),
            f"{label} passed ({verdict.reason}); step {nxt + 1}/{steps}: "
            f"{_pct(plan.steps[nxt])} to {plan.candidate}",
            step=nxt,
            due_s=now + plan.interval_s,
            window_from_ms=mark_ms,
            reference=reference,
            paused_by=None,
            paused_from=None,
        )
    return _moved(
        state,
        now,
        "Promoted",
        plan.on_candidate,
        f"{label} passed ({verdict.reason}); all {steps} steps passed: "
        f"{plan.candidate} promoted and is the baseline now",
        due_s=None,
        reference=reference,
        paused_by=None,
        paused_from=None,
    )


def _evaluate_bake(
    state: RolloutState,
    plan: Plan,
    now: float,
    window: Mapping[str, ArmMetrics],
    reference: Mapping[str, ArmMetrics] | None,
) -> RolloutState:
    if state.reference is None and reference is not None:
        state = _quietly(state, reference=reference.get(plan.baseline, ArmMetrics()).to_dict())
    before = ArmMetrics.from_dict(state.reference) if state.reference else ArmMetrics()
    verdict = judge(
        before,
        window.get(plan.candidate),
        plan.guardrails,
        baseline_name=f"{plan.baseline} (before the switch)",
        candidate_name=plan.candidate,
    )
    if verdict.outcome == "breach":
        return _moved(
            state,
            now,
            "RolledBack",
            plan.on_baseline,
            f"bake: {verdict.reason}; switched back to {plan.baseline}",
            due_s=None,
            paused_by=None,
            paused_from=None,
        )
    switched = state.switched_s if state.switched_s is not None else now
    bake_end = switched + plan.bake_s
    if now < bake_end:
        return _quietly(
            state,
            message=f"baking until {plan.bake_s:g}s after the switch: {verdict.reason}",
            due_s=min(now + plan.interval_s, bake_end),
        )
    if verdict.outcome == "insufficient":
        return _wait_for_traffic(state, now, plan, f"bake over but {verdict.reason}")
    return _promote_bluegreen(
        state, plan, now, f"bake of {plan.bake_s:g}s passed ({verdict.reason})"
    )


def _promote_bluegreen(state: RolloutState, plan: Plan, now: float, why: str) -> RolloutState:
    return _moved(
        state,
        now,
        "Promoted",
        plan.on_candidate,
        f"{why}; {plan.candidate} is active; {plan.baseline} stays available for rollback "
        f"for {plan.termination_wait_s:g}s",
        due_s=None,
        paused_by=None,
        paused_from=None,
        switched_s=state.switched_s if state.switched_s is not None else now,
        release_s=now + plan.termination_wait_s,
        released=False,
    )


def expire(state: RolloutState, plan: Plan, now: float) -> RolloutState:
    """Blue/green: once the termination wait is over, the old arm is released."""
    if (
        plan.mode == "bluegreen"
        and state.phase == "Promoted"
        and not state.released
        and state.release_s is not None
        and now >= state.release_s
    ):
        return _moved(
            state,
            now,
            "Promoted",
            state.weights,
            f"termination wait of {plan.termination_wait_s:g}s over: {plan.baseline} is released "
            f"(it may be scaled down; rollback is no longer offered)",
            released=True,
        )
    return state


def _refuse(action: str, state: RolloutState, why: str = "") -> RolloutConflict:
    detail = f": {why}" if why else ""
    return RolloutConflict(f"cannot {action} a rollout that is {state.phase}{detail}")


def _weights_for(state: RolloutState, plan: Plan, phase: Phase) -> dict[str, float]:
    if phase == "Progressing" and plan.mode == "canary":
        return plan.step_weights(state.step)
    if phase in ("Progressing", "Promoted"):
        return plan.on_candidate
    return plan.on_baseline


def act(
    state: RolloutState,
    plan: Plan,
    action: Action,
    *,
    now: float,
    mark_ms: int,
    reason: str | None = None,
) -> RolloutState:
    """A manual action; raises RolloutConflict when the phase does not allow it."""
    by_hand = f" by hand: {reason}" if reason else " by hand"
    phase = state.phase
    if action == "pause":
        if phase not in ACTIVE or (phase == "Paused" and state.paused_by == "manual"):
            raise _refuse("pause", state)
        origin = state.paused_from if phase == "Paused" else phase
        return _moved(
            state,
            now,
            "Paused",
            state.weights,
            f"paused{by_hand}",
            paused_by="manual",
            paused_from=origin,
            due_s=None,
        )
    if action == "resume":
        if phase != "Paused":
            raise _refuse("resume", state)
        back: Phase = state.paused_from or "Progressing"
        changes: dict[str, Any] = {"paused_by": None, "paused_from": None, "due_s": None}
        if back == "Progressing":
            changes["due_s"] = now + plan.interval_s
            if plan.mode == "canary":
                changes["window_from_ms"] = mark_ms
        return _moved(
            state, now, back, _weights_for(state, plan, back), f"resumed{by_hand}", **changes
        )
    if action == "promote":
        if phase not in ACTIVE:
            raise _refuse("promote", state)
        if plan.mode == "bluegreen":
            return _promote_bluegreen(state, plan, now, f"promoted{by_hand}")
        return _moved(
            state,
            now,
            "Promoted",
            plan.on_candidate,
            f"promoted{by_hand}: {plan.candidate} is the baseline now",
            due_s=None,
            paused_by=None,
            paused_from=None,
        )
    if action == "abort":
        if phase not in ACTIVE:
            raise _refuse("abort", state)
        return _rolled_back(state, plan, now, f"aborted{by_hand}")
    if action == "rollback":
        if phase not in ("Progressing", "Paused", "Promoted"):
            raise _refuse("roll back", state)
        if phase == "Paused" and state.paused_from == "Pending":
            raise _refuse("roll back", state, f"{plan.baseline} is still active")
        if state.released:
            raise _refuse(
                "roll back", state, f"{plan.baseline} was released after the termination wait"
            )
        return _rolled_back(state, plan, now, f"rolled back{by_hand}")
    if action == "switch":
        if plan.mode != "bluegreen":
            raise RolloutConflict("switch is a blue/green action; this experiment is a canary")
        pending = phase == "Pending" or (phase == "Paused" and state.paused_from == "Pending")
        if not (pending or phase == "RolledBack"):
            raise _refuse("switch", state)
        return _switch(state, plan, now, mark_ms, f"switched{by_hand}")
    if action == "restart":
        return initial(plan, now=now, mark_ms=mark_ms, history=state.history)
    raise RolloutConflict(f"unknown action {action!r}")


def _rolled_back(state: RolloutState, plan: Plan, now: float, why: str) -> RolloutState:
    return _moved(
        state,
        now,
        "RolledBack",
        plan.on_baseline,
        f"{why}; all traffic on {plan.baseline}",
        due_s=None,
        paused_by=None,
        paused_from=None,
    )


def _switch(state: RolloutState, plan: Plan, now: float, mark_ms: int, why: str) -> RolloutState:
    switched = _moved(
        state,
        now,
        "Progressing",
        plan.on_candidate,
        f"{why}: all traffic to {plan.candidate}; baking for {plan.bake_s:g}s",
        switched_s=now,
        window_from_ms=mark_ms,
        reference=None,
        reference_range_ms=[
            mark_ms - int(max(plan.bake_s, MIN_REFERENCE_S) * 1000),
            mark_ms - 1,
        ],
        due_s=now + min(plan.interval_s, plan.bake_s),
        paused_by=None,
        paused_from=None,
        release_s=None,
        released=False,
    )
    if plan.bake_s <= 0:
        return _promote_bluegreen(switched, plan, now, "no bake configured")
    return switched


def set_weights(
    state: RolloutState | None,
    plan: Plan | None,
    mode: str,
    weights: dict[str, float],
    *,
    now: float,
    reason: str | None = None,
) -> RolloutState:
    """Weights set through the API. A rollout pauses, so the controller keeps off them."""
    by_hand = f"weights set by hand: {reason}" if reason else "weights set by hand"
    if plan is None:
        blank = state if state is not None else RolloutState(mode=mode, phase="Static", weights={})
        return _moved(blank, now, "Static", weights, by_hand, mode=mode)
    assert state is not None
    origin = state.paused_from if state.phase == "Paused" else state.phase
    return _moved(
        state,
        now,
        "Paused",
        weights,
        f"{by_hand}; the rollout is paused until resumed",
        paused_by="manual",
        paused_from=origin,
        due_s=None,
    )
