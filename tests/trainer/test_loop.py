"""When the training loop gives up on a challenger and snapshots the learner afresh."""

from __future__ import annotations

from typing import Any

import pytest

from banditgate.policy import build_policy
from banditgate.spec import parse_spec
from trainer.learner import new_learner
from trainer.loop import MAX_EVIDENCE_FACTOR, TrainingLoop


class Evidence:
    """Stands in for the evaluation window: the gate sees exactly these numbers."""

    def __init__(self, n: int, lo: float, hi: float) -> None:
        self.n, self.lo, self.hi = n, lo, hi

    def __len__(self) -> int:
        return self.n

    def clear(self) -> None:
        self.n = 0

    def estimates(self) -> dict[str, Any]:
        value = (self.lo + self.hi) / 2
        diff = {"value": value, "lo": self.lo, "hi": self.hi, "n": self.n}
        return {"difference": {"dr": diff}, "candidate": {}, "current": {}}


def loop_with(evidence: Evidence, *, margin: float = 0.02, min_examples: int = 100) -> TrainingLoop:
    spec = parse_spec(
        {
            "name": "loop",
            "arms": [
                {"name": "a", "url": "http://127.0.0.1:1"},
                {"name": "b", "url": "http://127.0.0.1:2"},
            ],
            "policy": {"gate": {"margin": margin, "min_examples": min_examples}},
        }
    )
    loop = TrainingLoop(spec, new_learner(spec), build_policy(spec, None, 0), 0)
    loop.update()  # takes the first challenger
    assert loop.challenger is not None
    loop.window = evidence  # type: ignore[assignment]
    return loop


@pytest.mark.parametrize(
    ("n", "lo", "hi", "replaced"),
    [
        # Significantly worse than the serving policy, though within the margin's reach
        # of its upper bound: it can only pass by chance, so a fresh snapshot replaces it.
        (200, -0.08, -0.001, True),
        # Undecided (the interval straddles 0 and reaches below -margin): keep collecting...
        (200, -0.08, 0.04, False),
        # ...up to MAX_EVIDENCE_FACTOR x the gate's minimum.
        (MAX_EVIDENCE_FACTOR * 100 - 1, -0.08, 0.04, False),
        (MAX_EVIDENCE_FACTOR * 100, -0.08, 0.04, True),
    ],
)
def test_a_challenger_is_replaced_only_when_it_cannot_pass(
    n: int, lo: float, hi: float, replaced: bool
) -> None:
    evidence = Evidence(n, lo, hi)
    loop = loop_with(evidence)
    before = loop.challenger
    outcome = loop.update()
    assert not outcome.publish
    assert outcome.record["decision"] == "rejected"
    assert ("replaced by a fresh challenger" in outcome.record["reason"]) is replaced
    assert (loop.challenger is not before) is replaced


def test_a_challenger_within_the_margin_is_published() -> None:
    loop = loop_with(Evidence(200, -0.015, 0.01))
    outcome = loop.update()
    assert outcome.publish and outcome.model is not None
    assert outcome.record["decision"] == "published"


@pytest.mark.parametrize(
    ("snapshot", "learned", "replaced"),
    [
        # The learner has learned as many examples again since the snapshot (and at least the
        # gate's minimum): an undecided challenger that old is replaced at once.
        (200, 400, True),
        (200, 399, False),
        # A snapshot of few examples still waits for the gate's minimum of new ones.
        (30, 129, False),
        (30, 130, True),
    ],
)
def test_an_undecided_stale_challenger_is_replaced(
    snapshot: int, learned: int, replaced: bool
) -> None:
    loop = loop_with(Evidence(200, -0.08, 0.04))
    assert loop.challenger is not None
    loop.challenger.examples = snapshot
    loop.learner.n_examples = learned
    before = loop.challenger
    outcome = loop.update()
    assert outcome.record["decision"] == "rejected"
    assert ("replaced by a fresh challenger" in outcome.record["reason"]) is replaced
    assert (loop.challenger is not before) is replaced
