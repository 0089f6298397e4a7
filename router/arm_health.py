"""Passive health of arms: outlier ejection and a circuit breaker per arm, no I/O, no clock of its own.

An arm is ejected after `failures_to_eject` consecutive failures (a connection that
cannot be made, a reset, a timeout, a 5xx). Once its cool-down has passed, the breaker
is half-open: one request is let through as a probe (`dispatched`), or, for an arm
with a `health_path`, a background check (`due_checks`, `router/health_checks.py`); its success re-admits the arm, its
failure ejects it again for twice as long (up to `max_cooldown_s`). Any success resets
the count. Routing asks `ejected()` and spreads the pmf over the rest
(`router/routing.py`); the healthy path costs one truthiness test of an empty dict.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

ArmKey = tuple[str, str]  # (experiment, arm)


@dataclass
class _Ejection:
    until: float
    cooldown_s: float
    probing: bool = False


class ArmHealth:
    def __init__(
        self,
        *,
        failures_to_eject: int = 5,
        cooldown_s: float = 5.0,
        max_cooldown_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[ArmKey, bool], None] | None = None,
    ) -> None:
        self.failures_to_eject = failures_to_eject
        self.cooldown_s = cooldown_s
        self.max_cooldown_s = max_cooldown_s
        self.clock = clock
        self.on_change = on_change  # (arm, ejected now)
        self.checked: set[ArmKey] = set()  # arms with an active check: no request probes them
        self._failures: dict[ArmKey, int] = {}
        self._ejected: dict[ArmKey, _Ejection] = {}
        self.ejections = 0

    def __bool__(self) -> bool:
        """Whether any arm is ejected or probing (the hot path's only question)."""
        return bool(self._ejected)

    def usable(self, key: ArmKey) -> bool:
        """May a request go to this arm now? Not while ejected and cooling down (and not
        at all while ejected, for an arm with an active check)."""
        ejection = self._ejected.get(key)
        if ejection is None:
            return True
        return key not in self.checked and self.clock() >= ejection.until

    def due_checks(self) -> list[ArmKey]:
        """Ejected, actively checked arms whose cool-down has passed (each now probing)."""
        due = []
        now = self.clock()
        for key, ejection in self._ejected.items():
            if key in self.checked and now >= ejection.until:
                ejection.probing = True
                ejection.until = now + ejection.cooldown_s
                due.append(key)
        return due

    def dispatched(self, key: ArmKey) -> None:
        """A request goes to this arm: if it is cooled down, that request is its probe
        (the next one is admitted after another cool-down if this one never reports)."""
        ejection = self._ejected.get(key)
        if ejection is not None and key not in self.checked:
            now = self.clock()
            if now >= ejection.until:
                ejection.probing = True
                ejection.until = now + ejection.cooldown_s

    def success(self, key: ArmKey) -> None:
        if self._failures:
            self._failures.pop(key, None)
        if self._ejected and self._ejected.pop(key, None) is not None:
            log.info("arm %s of %s re-admitted", key[1], key[0])
            if self.on_change is not None:
                self.on_change(key, False)

    def failure(self, key: ArmKey) -> None:
        ejection = self._ejected.get(key)
        if ejection is not None:
            if ejection.probing:  # the probe failed: open again, for longer
                ejection.cooldown_s = min(ejection.cooldown_s * 2, self.max_cooldown_s)
                ejection.until = self.clock() + ejection.cooldown_s
                ejection.probing = False
            return
        count = self._failures.get(key, 0) + 1
        if count < self.failures_to_eject:
            self._failures[key] = count
            return
        self._failures.pop(key, None)
        self._ejected[key] = _Ejection(self.clock() + self.cooldown_s, self.cooldown_s)
        self.ejections += 1
        log.warning(
            "arm %s of %s ejected after %d consecutive failures (%.1fs)",
            key[1],
            key[0],
            count,
            self.cooldown_s,
        )
        if self.on_change is not None:
            self.on_change(key, True)

    def ejected(self) -> list[ArmKey]:
        """Arms ejected or on probation."""
        return list(self._ejected)


def spread(pmf: list[float], usable: list[bool]) -> list[float] | None:
    """`pmf` renormalised over the usable arms (None when they carry no probability)."""
    total = sum(p for p, ok in zip(pmf, usable, strict=True) if ok)
    if total <= 0:
        return None
    return [p / total if ok else 0.0 for p, ok in zip(pmf, usable, strict=True)]
