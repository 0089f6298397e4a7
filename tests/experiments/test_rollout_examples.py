"""The rollout examples users copy are valid specs in the mode they show."""

from __future__ import annotations

from pathlib import Path

import pytest

from banditgate.spec import load_specs

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("mode", ["ab", "canary", "bluegreen", "shadow"])
def test_the_example_parses(mode):
    (spec,) = load_specs(EXAMPLES / f"{mode}.yaml")
    assert spec.mode == mode
    assert spec.name == f"reviews-{mode}"
