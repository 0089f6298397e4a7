"""Outlier ejection and the per-arm breaker, on a clock the test turns."""

from __future__ import annotations

from router.arm_health import ArmHealth, spread

ARM = ("reviews", "a")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_ejects_after_consecutive_failures_and_probes_after_the_cooldown() -> None:
    clock = Clock()
    changes: list[bool] = []
    health = ArmHealth(
        failures_to_eject=3,
        cooldown_s=5,
        max_cooldown_s=12,
        clock=clock,
        on_change=lambda _, ejected: changes.append(ejected),
    )
    health.failure(ARM)
    health.failure(ARM)
    health.success(ARM)  # a success in between resets the count
    health.failure(ARM)
    health.failure(ARM)
    assert health.usable(ARM) and not health
    health.failure(ARM)
    assert not health.usable(ARM) and health.ejected() == [ARM] and changes == [True]
    clock.now += 5
    assert health.usable(ARM)
    health.dispatched(ARM)  # this request is the probe: the next waits
    assert not health.usable(ARM)
    health.failure(ARM)  # the probe failed: out for twice as long
    clock.now += 9.9
    assert not health.usable(ARM)
    clock.now += 0.1
    health.dispatched(ARM)
    health.failure(ARM)
    clock.now += 12  # capped at max_cooldown_s
    assert health.usable(ARM)
    health.dispatched(ARM)
    health.success(ARM)
    assert health.usable(ARM) and not health and changes == [True, False]
    assert health.ejections == 1


def test_an_abandoned_probe_lets_another_through_after_a_cooldown() -> None:
    clock = Clock()
    health = ArmHealth(failures_to_eject=1, cooldown_s=2, clock=clock)
    health.failure(ARM)
    clock.now += 2
    health.dispatched(ARM)
    assert not health.usable(ARM)
    clock.now += 2
    assert health.usable(ARM)


def test_spread_renormalises_over_usable_arms() -> None:
    assert spread([0.5, 0.25, 0.25], [False, True, True]) == [0.0, 0.5, 0.5]
    assert spread([1.0, 0.0], [False, True]) is None
