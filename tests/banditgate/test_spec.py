from __future__ import annotations

from pathlib import Path

import pytest

from banditgate.errors import InvalidSpec
from banditgate.pointers import PointerError, parse_pointer, resolve
from banditgate.spec import load_specs, parse_spec

ARMS = [{"name": "a", "url": "http://127.0.0.1:1"}, {"name": "b", "url": "http://127.0.0.1:2"}]


def problem(doc: dict) -> tuple[str | None, str]:  # type: ignore[type-arg]
    with pytest.raises(InvalidSpec) as info:
        parse_spec(doc)
    return info.value.field, info.value.message


def test_the_example_spec_loads() -> None:
    (spec,) = load_specs(Path(__file__).parents[2] / "examples" / "reviews.yaml")
    assert spec.name == "reviews"
    assert spec.mode == "bandit"
    assert spec.policy.exploration.type in {"epsilon", "cover", "bag", "softmax", "squarecb"}


@pytest.mark.parametrize(
    ("doc", "field", "reason"),
    [
        ({"name": "Bad Name", "arms": ARMS}, "name", "String should match pattern"),
        ({"name": "x", "arms": []}, "arms", "at least 1 item"),
        ({"name": "x", "arms": [{"name": "a", "url": "ftp://h"}]}, "arms[0].url", "http://"),
        ({"name": "x", "arms": [ARMS[0], ARMS[0]]}, "arms[1].name", "duplicate arm name"),
        (
            {"name": "x", "arms": ARMS, "policy": {"exploration": {"type": "greedy"}}},
            "policy.exploration.type",
            "Input should be",
        ),
        (
            {"name": "x", "arms": ARMS, "policy": {"min_arm_share": 0.6}},
            "policy.min_arm_share",
            "exceeds 1",
        ),
        (
            {"name": "x", "arms": ARMS, "reward": {"min": 1, "max": 0}},
            "reward",
            "min must be below max",
        ),
        ({"name": "x", "arms": ARMS, "context": {"body": ["a..b"]}}, "context.body", "empty key"),
        ({"name": "x", "arms": ARMS, "mode": "canary"}, "canary", "needs a 'canary' section"),
        (
            {
                "name": "x",
                "arms": ARMS,
                "mode": "canary",
                "canary": {"baseline": "a", "canary": "z"},
            },
            "canary.canary",
            "unknown arm 'z'",
        ),
        (
            {
                "name": "x",
                "arms": ARMS,
                "mode": "canary",
                "canary": {"baseline": "a", "canary": "b", "steps": [10, 5]},
            },
            "canary.steps",
            "steps must increase",
        ),
        (
            {"name": "x", "arms": ARMS, "mode": "canary", "canary": {"canary": "b"}},
            "canary.baseline",
            "Field required",
        ),
        (
            {"name": "x", "arms": ARMS, "policy": {"weights": {"a": 0, "b": 0}}},
            "policy.weights",
            "positive number",
        ),
        (
            {"name": "x", "arms": ARMS, "policy": {"weights": {"zz": 1}}},
            "policy.weights.zz",
            "unknown arm",
        ),
        (
            {"name": "x", "arms": ARMS, "policy": {"vw_args": "-f out.model"}},
            "policy.vw_args",
            "managed by banditgate",
        ),
        ({"name": "x", "arms": ARMS, "surprise": 1}, "surprise", "Extra inputs"),
    ],
)
def test_bad_specs_name_the_field_and_the_reason(doc: dict, field: str, reason: str) -> None:  # type: ignore[type-arg]
    got_field, message = problem(doc)
    assert got_field == field
    assert reason in message


def test_load_specs_reports_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\narms: nope\n")
    with pytest.raises(InvalidSpec) as info:
        load_specs(path)
    assert str(path) in info.value.message and "arms" in info.value.message
    path.write_text("name: [unclosed\n")
    with pytest.raises(InvalidSpec, match="not valid YAML"):
        load_specs(path)


def test_multi_document_yaml(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text(
        "name: one\narms: [{name: a, url: 'http://h'}]\n---\nname: two\narms: [{name: b, url: 'http://h'}]\n"
    )
    assert [s.name for s in load_specs(path)] == ["one", "two"]


def test_pointers() -> None:
    doc = {"features": ["text", 2], "a": {"b": [{"c": 5}]}, "x/y": 1}
    assert resolve(doc, "features[0]") == "text"
    assert resolve(doc, "a.b[0].c") == 5
    assert resolve(doc, "/a/b/0/c") == 5
    assert resolve(doc, "/x~1y") == 1
    assert resolve(doc, "a.missing") is None
    assert resolve(doc, "features[9]") is None
    assert resolve("not a dict", "a") is None
    with pytest.raises(PointerError):
        parse_pointer("a.")
    with pytest.raises(PointerError):
        parse_pointer("a[x]")


def test_auto_learner_is_accepted_and_other_names_are_refused_with_the_field() -> None:
    spec = parse_spec({"name": "x", "arms": ARMS, "policy": {"learner": "auto"}})
    assert spec.policy.learner == "auto"
    assert parse_spec({"name": "x", "arms": ARMS}).policy.learner == "vw"  # still the default
    field, message = problem({"name": "x", "arms": ARMS, "policy": {"learner": "automatic"}})
    assert field == "policy.learner" and "auto" in message
