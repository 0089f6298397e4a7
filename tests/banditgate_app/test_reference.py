"""docs/reference.md is what the code says: every setting, every spec field, every command."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from banditgate_app import reference
from banditgate_app.reference import SETTINGS, Undocumented, render

ROOT = Path(__file__).resolve().parents[2]


def test_checked_in_reference_is_current() -> None:
    page = (ROOT / "docs" / "reference.md").read_text()
    assert page == render(), "docs/reference.md is out of date: run `make docs` and commit it"


def test_every_setting_and_spec_field_is_on_the_page() -> None:
    page = render()
    for cls, _ in SETTINGS:
        for name in cls.model_fields:
            assert f"| `BANDITGATE_{name.upper()}` |" in page
    for section in ("arms[]", "policy.exploration", "policy.gate", "reward", "ab.rules[]"):
        assert f"### `{section}`" in page
    assert "| `backward_window_s` | number | `120.0` | How long a reward" in page
    assert "| `rule` | `paired` \\| `unpaired` | `paired` |" in page
    assert "| `BANDITGATE_DATA_DIR` | path | `.banditgate` |" in page
    assert "| `banditgate workers` |" in page
    assert "| `BANDITGATE_URL` | `--url` |" in page


def test_a_field_without_a_description_stops_the_page() -> None:
    class Loose(BaseModel):
        documented: int = Field(default=1, description="Has one.")
        bare: int = 2

    assert reference._described(Loose.model_fields["documented"], "x") == "Has one."
    with pytest.raises(Undocumented, match="bare has no description"):
        reference._described(Loose.model_fields["bare"], "bare")
