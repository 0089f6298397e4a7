"""Reference policies on the same traffic: what simple, good algorithms reach.

They see what a policy sees (the featurized context, used as a table key) and learn
with the trainer's cadence: joined examples are buffered and applied in batches.
"""

from __future__ import annotations

import math
import random
from collections.abc import Hashable

BATCH = 200


class _Batched:
    """Per-cell, per-arm reward sums and counts, updated every `BATCH` joined examples."""

    name = "reference"

    def __init__(self, seed: int, batch: int = BATCH, discount: float = 1.0) -> None:
        self.rng = random.Random(f"{self.name}-{seed}")
        self.batch = batch
        self.discount = discount
        self.sums: dict[Hashable, dict[str, float]] = {}
        self.counts: dict[Hashable, dict[str, float]] = {}
        self.pending: list[tuple[Hashable, str, float]] = []

    def learn(self, cell: Hashable, arm: str, reward: float) -> None:
        self.pending.append((cell, arm, reward))
        if len(self.pending) >= self.batch:
            self._flush()

    def _flush(self) -> None:
        if self.discount < 1.0:
            factor = self.discount ** len(self.pending)
            for table in (self.sums, self.counts):
                for arms in table.values():
                    for arm in arms:
                        arms[arm] *= factor
        for cell, arm, reward in self.pending:
            sums = self.sums.setdefault(cell, {})
            counts = self.counts.setdefault(cell, {})
            sums[arm] = sums.get(arm, 0.0) + min(max(reward, 0.0), 1.0)
            counts[arm] = counts.get(arm, 0.0) + 1.0
        self.pending.clear()

    def choose(self, cell: Hashable, arms: tuple[str, ...]) -> str:
        raise NotImplementedError


class Thompson(_Batched):
    """Beta(1 + successes, 1 + failures) per cell and arm (fractional for continuous rewards)."""

    name = "thompson"

    def choose(self, cell: Hashable, arms: tuple[str, ...]) -> str:
        sums = self.sums.get(cell, {})
        counts = self.counts.get(cell, {})
        best, best_draw = arms[0], -1.0
        for arm in arms:
            s, n = sums.get(arm, 0.0), counts.get(arm, 0.0)
            draw = self.rng.betavariate(1.0 + s, 1.0 + n - s)
            if draw > best_draw:
                best, best_draw = arm, draw
        return best


class DiscountedThompson(Thompson):
    """Thompson whose counts decay by `discount` per joined example (half-life ~700)."""

    name = "thompson-discounted"

    def __init__(self, seed: int, batch: int = BATCH, discount: float = 0.999) -> None:
        super().__init__(seed, batch, discount)


class UCB(_Batched):
    """UCB1 per cell: mean + sqrt(2 ln n / n_arm); an untried arm first."""

    name = "ucb"

    def choose(self, cell: Hashable, arms: tuple[str, ...]) -> str:
        sums = self.sums.get(cell, {})
        counts = self.counts.get(cell, {})
        untried = [a for a in arms if counts.get(a, 0.0) <= 0.0]
        if untried:
            return self.rng.choice(untried)
        total = sum(counts[a] for a in arms)
        return max(
            arms,
            key=lambda a: sums[a] / counts[a] + math.sqrt(2.0 * math.log(total) / counts[a]),
        )


REFERENCES: dict[str, type[_Batched]] = {
    cls.name: cls for cls in (Thompson, UCB, DiscountedThompson)
}
