"""`learner: auto`: the trainer trains several learners and publishes the best.

Each published version records the learner that won, and its model says which it
is (a linear_thompson model starts with its magic bytes; anything else is VW), so a
router builds whichever learner won from the version alone.
"""

from __future__ import annotations

from banditgate.linear_thompson import MAGIC as LINEAR_THOMPSON_MAGIC
from banditgate.spec import ExperimentSpec

AUTO = "auto"
CANDIDATES: tuple[str, ...] = ("vw", "linear_thompson")


def learner_of_model(model: bytes | None) -> str:
    """Which candidate built `model` (None, the cold start, serves as VW)."""
    if model is not None and model.startswith(LINEAR_THOMPSON_MAGIC):
        return "linear_thompson"
    return "vw"


def concrete(spec: ExperimentSpec, learner: str) -> ExperimentSpec:
    """`spec` with one candidate in place of `auto` (the spec itself when not auto)."""
    if spec.policy.learner != AUTO:
        return spec
    return spec.model_copy(update={"policy": spec.policy.model_copy(update={"learner": learner})})


def serves(spec: ExperimentSpec, recorded: str) -> bool:
    """Can a version recorded for `recorded` serve this spec?"""
    learner = spec.policy.learner
    return recorded == learner or (learner == AUTO and recorded in CANDIDATES)
