"""Change detection on the joined stream: has an arm's reward moved, in some context cell?

Per arm and context cell (the context's categorical features; numeric ones are left
out of the key), the most recent `window` rewards are compared with every older one
since the last alarm: a Welch z statistic of the two means. An alarm needs both
|z| >= `threshold` and a shift of at least `min_shift` of the reward range. Within a
cell the policy treats every request alike, so a stationary world keeps the two
samples alike however the policy moves traffic between cells; a change in the
rewards does not. After an alarm the cell's older sample restarts from its recent one.

Pure: no I/O, no clock. The training loop (trainer/loop.py) feeds it and checks it at
each update; bench/worlds measures its false alarms and delays.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from banditgate.spec import ChangeSpec

MAX_CELLS = 512  # per detector: cells beyond this are not watched
MIN_VARIANCE = 1e-3  # of rewards scaled to [0, 1]: a constant sample is not infinitely sure


def cell_of(context: dict[str, Any]) -> Hashable:
    """The categorical part of a context: what the policy cannot tell apart within."""
    return tuple(
        sorted(
            (k, tuple(v) if isinstance(v, list) else v)
            for k, v in context.items()
            if isinstance(v, str | bool | list)
        )
    )


@dataclass
class _Sample:
    recent: deque[float]
    since: deque[int]  # the example index of each recent reward
    n: int = 0  # the older rewards, as sums
    total: float = 0.0
    squares: float = 0.0

    def add(self, value: float, index: int) -> None:
        if len(self.recent) == self.recent.maxlen:
            old = self.recent[0]
            self.n += 1
            self.total += old
            self.squares += old * old
        self.recent.append(value)
        self.since.append(index)

    def restart(self) -> None:
        self.n = len(self.recent)
        self.total = sum(self.recent)
        self.squares = sum(v * v for v in self.recent)
        self.recent.clear()
        self.since.clear()


@dataclass(frozen=True)
class Alarm:
    arm: str
    cell: Hashable
    before: float  # mean of the older rewards, scaled to [0, 1]
    after: float  # mean of the recent ones
    z: float
    n_before: int
    n_after: int
    since: int  # index of the first recent example: where the change is placed

    def to_dict(self) -> dict[str, Any]:
        return {
            "arm": self.arm,
            "cell": {str(k): v for k, v in self.cell} if isinstance(self.cell, tuple) else {},
            "before": round(self.before, 4),
            "after": round(self.after, 4),
            "z": round(self.z, 2),
            "n_before": self.n_before,
            "n_after": self.n_after,
            "since_example": self.since,
        }


@dataclass
class ChangeDetector:
    spec: ChangeSpec
    low: float = 0.0
    high: float = 1.0
    samples: dict[tuple[str, Hashable], _Sample] = field(default_factory=dict)
    alarms: int = 0

    @property
    def enabled(self) -> bool:
        return self.spec.detector != "off"

    def add(self, arm: str, context: dict[str, Any], reward: float, index: int) -> None:
        if not self.enabled:
            return
        key = (arm, cell_of(context))
        sample = self.samples.get(key)
        if sample is None:
            if len(self.samples) >= MAX_CELLS:
                return
            sample = self.samples[key] = _Sample(
                deque(maxlen=self.spec.window), deque(maxlen=self.spec.window)
            )
        span = self.high - self.low
        scaled = (reward - self.low) / span if span > 0 else 0.0
        sample.add(min(max(scaled, 0.0), 1.0), index)

    def check(self) -> list[Alarm]:
        """Alarms for the cells whose recent rewards differ from their older ones."""
        found = []
        for (arm, cell), sample in self.samples.items():
            alarm = self._test(arm, cell, sample)
            if alarm is not None:
                found.append(alarm)
                sample.restart()
        self.alarms += len(found)
        return found

    def reset(self) -> None:
        """Forget every sample (after the learner itself forgot)."""
        for sample in self.samples.values():
            sample.restart()

    def _test(self, arm: str, cell: Hashable, sample: _Sample) -> Alarm | None:
        window = self.spec.window
        m = len(sample.recent)
        if m < window or sample.n < window:
            return None
        before = sample.total / sample.n
        after = sum(sample.recent) / m
        if abs(after - before) < self.spec.min_shift:
            return None
        var_before = max(sample.squares / sample.n - before * before, MIN_VARIANCE)
        var_after = max(sum(v * v for v in sample.recent) / m - after * after, MIN_VARIANCE)
        z = (after - before) / math.sqrt(var_before / sample.n + var_after / m)
        if abs(z) < self.spec.threshold:
            return None
        return Alarm(arm, cell, before, after, z, sample.n, m, sample.since[0])
