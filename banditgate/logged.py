"""A logged decision with its reward, in the form policies score and learners learn.

The trainer learns from these, and the control plane evaluates a hand-published
model on them (banditgate.publish_check).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from banditgate.events import Joined
from banditgate.featurize import action_line, example_lines
from banditgate.policy import ActionSet
from banditgate.spec import ExperimentSpec


@dataclass
class Example:
    """One joined example, ready to learn from and to evaluate on."""

    context: dict[str, Any]
    actions: ActionSet
    chosen: int
    logged_prob: float
    reward: float
    rewarded: bool = True  # a real reward, not the default of one that never came

    @property
    def shared_and_actions(self) -> list[str]:
        return example_lines(self.context, self.actions.lines)


def to_example(joined: Joined, spec: ExperimentSpec | None) -> Example | None:
    """The learnable form of a joined example, or None if it cannot be learned from."""
    decision = joined["decision"]
    names = decision.get("arms") or []
    pmf = decision.get("pmf") or []
    chosen = decision.get("chosen")
    if not names or len(pmf) != len(names) or chosen not in names:
        return None
    index = names.index(chosen)
    probability = float(pmf[index])
    if not (0.0 < probability <= 1.0) or not math.isfinite(joined["reward"]):
        return None
    supplied = decision.get("action_features")
    lines = []
    for position, name in enumerate(names):
        if supplied is not None and position < len(supplied):
            features = supplied[position]
        else:
            arm = spec.arm(name) if spec is not None else None
            features = arm.features if arm is not None else {}
        lines.append(action_line(name, features))
    context = decision.get("context") or {}
    return Example(
        context,
        ActionSet(tuple(names), tuple(lines)),
        index,
        probability,
        joined["reward"],
        bool(joined.get("rewarded", True)),
    )
