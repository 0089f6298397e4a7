"""The canary and blue/green state machine on its own: injected clock, given metrics."""

from __future__ import annotations

from typing import Any

import pytest

from banditgate.spec import parse_spec
from experiments.guardrails import ArmMetrics
from experiments.rollout import (
    Plan,
    RolloutConflict,
    RolloutState,
    act,
    due,
    evaluate,
    expire,
    initial,
    reconcile,
    set_weights,
)

T0 = 1_000_000.0
MARK = 5_000


def canary_plan(**section: Any) -> Plan:
    spec = parse_spec(
        {
            "name": "c",
            "mode": "canary",
            "arms": [{"name": "base", "url": "http://b"}, {"name": "new", "url": "http://n"}],
            "canary": {
                "baseline": "base",
                "canary": "new",
                "steps": [10, 50, 100],
                "interval_s": 60,
                "guardrails": {"min_samples": 50},
                **section,
            },
        }
    )
    plan = Plan.from_spec(spec)
    assert plan is not None
    return plan


def bluegreen_plan(**section: Any) -> Plan:
    spec = parse_spec(
        {
            "name": "bg",
            "mode": "bluegreen",
            "arms": [{"name": "blue", "url": "http://b"}, {"name": "green", "url": "http://g"}],
            "bluegreen": {
                "active": "blue",
                "preview": "green",
                "bake_s": 100,
                "termination_wait_s": 300,
                "guardrails": {"min_samples": 50},
                **section,
            },
        }
    )
    plan = Plan.from_spec(spec)
    assert plan is not None
    return plan


def healthy(n: int = 100, p99: float = 10.0) -> ArmMetrics:
    return ArmMetrics(requests=n, errors=0, p99_ms=p99)


def judged(state: RolloutState, plan: Plan, now: float, **window: ArmMetrics) -> RolloutState:
    assert due(state, plan, now) is not None
    return evaluate(state, plan, now=now, mark_ms=MARK + int(now - T0) * 1000, window=window)


def test_a_canary_walks_its_steps_and_is_promoted():
    plan = canary_plan()
    state = initial(plan, now=T0, mark_ms=MARK)
    assert state.phase == "Progressing"
    assert state.weights == {"base": 90.0, "new": 10.0}
    assert due(state, plan, T0 + 59) is None

    state = judged(state, plan, T0 + 60, base=healthy(900), new=healthy(100))
    assert (state.phase, state.step, state.weights) == (
        "Progressing",
        1,
        {"base": 50.0, "new": 50.0},
    )
    assert state.window_from_ms == MARK + 60_000  # the next step is judged on fresh traffic

    state = judged(state, plan, T0 + 120, base=healthy(500), new=healthy(500))
    assert state.weights == {"base": 0.0, "new": 100.0}
    # The 100 % step has no baseline traffic: it is judged against the last step's baseline.
    state = judged(state, plan, T0 + 180, new=healthy(1000))
    assert state.phase == "Promoted"
    assert state.weights == {"base": 0.0, "new": 100.0}
    assert [h["phase"] for h in state.history] == ["Progressing"] * 3 + ["Promoted"]
    assert "all 3 steps passed" in state.history[-1]["reason"]
    assert due(state, plan, T0 + 10_000) is None


def test_errors_on_the_canary_roll_it_back_with_the_reason():
    plan = canary_plan()
    state = initial(plan, now=T0, mark_ms=MARK)
    state = judged(
        state, plan, T0 + 60, base=healthy(900), new=ArmMetrics(requests=100, errors=7, p99_ms=10)
    )
    assert state.phase == "RolledBack"
    assert state.weights == {"base": 100.0, "new": 0.0}
    reason = state.history[-1]["reason"]
    assert "error rate new 7.0% (7/100) vs base 0.0% (0/900)" in reason
    assert "rolled back to 0%" in reason


def test_latency_breaches_only_past_both_the_ratio_and_the_delta():
    plan = canary_plan(
        guardrails={"min_samples": 50, "max_p99_latency_ratio": 1.5, "max_p99_latency_delta_ms": 50}
    )
    state = initial(plan, now=T0, mark_ms=MARK)
    # Three times slower but only 20 ms more: not a regression.
    state = judged(state, plan, T0 + 60, base=healthy(p99=10), new=healthy(p99=30))
    assert state.phase == "Progressing" and state.step == 1
    state = judged(state, plan, T0 + 120, base=healthy(p99=100), new=healthy(p99=400))
    assert state.phase == "RolledBack"
    assert "p99 new 400.0 ms vs base 100.0 ms" in state.message


def test_too_little_traffic_pauses_and_the_step_continues_once_enough_arrives():
    plan = canary_plan()
    state = initial(plan, now=T0, mark_ms=MARK)
    state = judged(state, plan, T0 + 60, base=healthy(200), new=healthy(12))
    assert state.phase == "Paused" and state.paused_by == "traffic"
    assert state.weights == {"base": 90.0, "new": 10.0}  # not a failure: traffic stays put
    assert "new has 12/50 requests" in state.message
    assert state.window_from_ms == MARK  # the window keeps accumulating

    still = judged(state, plan, T0 + 120, base=healthy(400), new=healthy(30))
    assert still.phase == "Paused" and len(still.history) == len(state.history)

    moved = judged(still, plan, T0 + 180, base=healthy(600), new=healthy(60))
    assert moved.phase == "Progressing" and moved.step == 1


def test_a_breach_wins_over_a_reward_guardrail_still_short_of_samples():
    plan = canary_plan(
        guardrails={"min_samples": 50, "min_reward_delta": -0.05, "min_reward_samples": 100}
    )
    state = initial(plan, now=T0, mark_ms=MARK)
    paused = judged(state, plan, T0 + 60, base=healthy(), new=healthy())
    assert paused.phase == "Paused" and "new has 0/100 rewards" in paused.message
    bad = ArmMetrics(requests=100, errors=50, p99_ms=10)
    assert judged(paused, plan, T0 + 120, base=healthy(), new=bad).phase == "RolledBack"


def test_a_lower_mean_reward_rolls_the_canary_back():
    plan = canary_plan(
        guardrails={"min_samples": 50, "min_reward_delta": -0.05, "min_reward_samples": 100}
    )
    state = initial(plan, now=T0, mark_ms=MARK)
    base = ArmMetrics(requests=500, p99_ms=10, rewards=400, reward_sum=320.0)  # 0.80
    new = ArmMetrics(requests=100, p99_ms=10, rewards=100, reward_sum=60.0)  # 0.60
    state = judged(state, plan, T0 + 60, base=base, new=new)
    assert state.phase == "RolledBack"
    assert "mean reward new 0.6000 (100) vs base 0.8000 (400)" in state.message


def test_manual_pause_holds_and_resume_restarts_the_step_window():
    plan = canary_plan()
    state = initial(plan, now=T0, mark_ms=MARK)
    paused = act(state, plan, "pause", now=T0 + 10, mark_ms=MARK + 10_000, reason="incident 42")
    assert paused.phase == "Paused" and paused.paused_by == "manual"
    assert paused.history[-1]["reason"] == "paused by hand: incident 42"
    assert due(paused, plan, T0 + 1_000) is None
    with pytest.raises(RolloutConflict):
        act(paused, plan, "pause", now=T0 + 11, mark_ms=MARK)

    resumed = act(paused, plan, "resume", now=T0 + 500, mark_ms=MARK + 500_000)
    assert resumed.phase == "Progressing" and resumed.weights == {"base": 90.0, "new": 10.0}
    assert resumed.window_from_ms == MARK + 500_000
    assert due(resumed, plan, T0 + 559) is None and due(resumed, plan, T0 + 560) is not None


def test_manual_promote_and_abort():
    plan = canary_plan()
    state = initial(plan, now=T0, mark_ms=MARK)
    promoted = act(state, plan, "promote", now=T0 + 1, mark_ms=MARK)
    assert promoted.phase == "Promoted" and promoted.weights == {"base": 0.0, "new": 100.0}
    aborted = act(state, plan, "abort", now=T0 + 1, mark_ms=MARK)
    assert aborted.phase == "RolledBack" and aborted.weights == {"base": 100.0, "new": 0.0}
    for done in (promoted, aborted):
        for action in ("pause", "resume", "promote", "abort"):
            with pytest.raises(RolloutConflict):
                act(done, plan, action, now=T0 + 2, mark_ms=MARK)  # type: ignore[arg-type]
    with pytest.raises(RolloutConflict, match="blue/green"):
        act(state, plan, "switch", now=T0 + 2, mark_ms=MARK)
    restarted = act(aborted, plan, "restart", now=T0 + 3, mark_ms=MARK)
    assert restarted.phase == "Progressing" and restarted.step == 0
    assert len(restarted.history) == len(aborted.history) + 1


def test_weights_by_hand_pause_a_rollout_and_resume_gives_traffic_back():
    plan = canary_plan()
    state = initial(plan, now=T0, mark_ms=MARK)
    manual = set_weights(state, plan, "canary", {"base": 70.0, "new": 30.0}, now=T0 + 5)
    assert manual.phase == "Paused" and manual.paused_by == "manual"
    assert manual.weights == {"base": 70.0, "new": 30.0}
    resumed = act(manual, plan, "resume", now=T0 + 6, mark_ms=MARK)
    assert resumed.weights == {"base": 90.0, "new": 10.0}


def test_a_new_canary_target_starts_a_new_rollout_and_keeps_the_history():
    plan = canary_plan()
    state = act(initial(plan, now=T0, mark_ms=MARK), plan, "promote", now=T0 + 1, mark_ms=MARK)
    assert reconcile(state, plan, now=T0 + 2, mark_ms=MARK) is state
    spec = parse_spec(
        {
            "name": "c",
            "mode": "canary",
            "arms": [
                {"name": "base", "url": "http://b"},
                {"name": "new", "url": "http://n"},
                {"name": "newer", "url": "http://m"},
            ],
            "canary": {"baseline": "new", "canary": "newer", "steps": [20, 100]},
        }
    )
    nxt = Plan.from_spec(spec)
    assert nxt is not None
    started = reconcile(state, nxt, now=T0 + 3, mark_ms=MARK)
    assert (started.phase, started.weights) == ("Progressing", {"new": 80.0, "newer": 20.0})
    assert len(started.history) == len(state.history) + 1


def test_bluegreen_waits_for_a_switch_then_bakes_and_promotes():
    plan = bluegreen_plan()
    state = initial(plan, now=T0, mark_ms=MARK)
    assert state.phase == "Pending" and state.weights == {"blue": 100.0, "green": 0.0}
    assert due(state, plan, T0 + 10_000) is None
    with pytest.raises(RolloutConflict):
        act(state, plan, "rollback", now=T0, mark_ms=MARK)

    switched = act(state, plan, "switch", now=T0 + 10, mark_ms=70_000)
    assert switched.phase == "Progressing" and switched.weights == {"blue": 0.0, "green": 100.0}
    assert switched.reference_range_ms == [70_000 - 100_000, 69_999]
    window = due(switched, plan, T0 + 30)
    assert window is not None and window.since_ms == 70_000
    assert window.reference_range_ms == (70_000 - 100_000, 69_999)

    baking = evaluate(
        switched,
        plan,
        now=T0 + 30,
        mark_ms=0,
        window={"green": healthy(80)},
        reference={"blue": healthy(400)},
    )
    assert baking.phase == "Progressing" and baking.reference is not None
    assert due(baking, plan, T0 + 30) is None
    done = judged(baking, plan, T0 + 110, green=healthy(400))
    assert done.phase == "Promoted" and done.release_s == T0 + 110 + 300
    assert done.weights == {"blue": 0.0, "green": 100.0}


def test_bluegreen_bake_breach_switches_back():
    plan = bluegreen_plan()
    state = act(initial(plan, now=T0, mark_ms=MARK), plan, "switch", now=T0, mark_ms=MARK)
    state = evaluate(
        state,
        plan,
        now=T0 + 20,
        mark_ms=0,
        window={"green": ArmMetrics(requests=60, errors=30, p99_ms=5)},
        reference={"blue": healthy(300)},
    )
    assert state.phase == "RolledBack" and state.weights == {"blue": 100.0, "green": 0.0}
    assert "switched back to blue" in state.message
    again = act(state, plan, "switch", now=T0 + 30, mark_ms=MARK)
    assert again.phase == "Progressing"


def test_bluegreen_rollback_is_instant_until_the_termination_wait_is_over():
    plan = bluegreen_plan()
    state = act(initial(plan, now=T0, mark_ms=MARK), plan, "promote", now=T0, mark_ms=MARK)
    assert state.phase == "Promoted" and state.release_s == T0 + 300
    assert expire(state, plan, T0 + 299) is state
    back = act(state, plan, "rollback", now=T0 + 299, mark_ms=MARK)
    assert back.phase == "RolledBack" and back.weights == {"blue": 100.0, "green": 0.0}

    released = expire(state, plan, T0 + 300)
    assert released.released and released.phase == "Promoted"
    assert "blue is released" in released.history[-1]["reason"]
    with pytest.raises(RolloutConflict, match="released"):
        act(released, plan, "rollback", now=T0 + 301, mark_ms=MARK)


def test_bluegreen_without_baseline_traffic_pauses_after_the_bake():
    plan = bluegreen_plan()
    state = act(initial(plan, now=T0, mark_ms=MARK), plan, "switch", now=T0, mark_ms=MARK)
    state = evaluate(
        state,
        plan,
        now=T0 + 100,
        mark_ms=0,
        window={"green": healthy(500)},
        reference={},
    )
    assert state.phase == "Paused" and state.paused_by == "traffic"
    assert "blue (before the switch) has 0/50 requests" in state.message
    assert act(state, plan, "promote", now=T0 + 101, mark_ms=0).phase == "Promoted"


def test_no_bake_promotes_at_the_switch():
    plan = bluegreen_plan(bake_s=0)
    state = act(initial(plan, now=T0, mark_ms=MARK), plan, "switch", now=T0, mark_ms=MARK)
    assert state.phase == "Promoted" and "no bake configured" in state.message


def test_state_round_trips_through_its_dict():
    plan = canary_plan()
    state = judged(
        initial(plan, now=T0, mark_ms=MARK), plan, T0 + 60, base=healthy(), new=healthy()
    )
    assert RolloutState.from_dict(state.to_dict()) == state
