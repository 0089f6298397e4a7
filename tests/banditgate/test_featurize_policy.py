from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import vowpalwabbit

from banditgate.errors import InvalidPolicy
from banditgate.featurize import (
    Featurizer,
    action_namespace,
    arm_action_lines,
    example_lines,
    namespaces,
    shared_line,
    text_features,
)
from banditgate.policy import (
    ActionSet,
    BetaCounts,
    StaticPolicy,
    ThompsonPolicy,
    apply_floor,
    new_workspace,
    sample_index,
    validate_model,
    workspace_to_bytes,
)
from banditgate.spec import ContextSpec, parse_spec

SPEC = parse_spec(
    {
        "name": "x",
        "arms": [
            {"name": "a", "url": "http://h", "features": {"size": "base"}},
            {"name": "b", "url": "http://h", "features": {"size": "large"}},
        ],
    }
)


def test_text_features_are_cheap_lexical_signals() -> None:
    short = text_features("Great!! Love it.")
    assert short["t.len"] == "5" and short["t.excl"] == "1+" and short["t.pos"] == "1+"
    assert short["t.negation"] is False
    long = text_features("I did not like this. " * 10 + "Terrible, awful, broken? 3 stars")
    assert long["t.len"] == "100" and long["t.negation"] is True and long["t.neg"] == "1+"
    assert long["t.question"] is True and long["t.digits"] is True
    assert text_features("WHY IS THIS SO BAD")["t.caps"] is True


def test_request_features_from_body_headers_and_text() -> None:
    featurizer = Featurizer(
        ContextSpec(
            body=["user.tier", "features[1]", "missing"], headers=["X-Segment"], text="features[0]"
        )
    )
    body = {"user": {"tier": "gold"}, "features": ["nice phone", 3.5]}
    features = featurizer.from_request(body, {"x-segment": "eu", "other": "ignored"})
    assert features["user.tier"] == "gold"
    assert features["features[1]"] == 3.5
    assert features["h.x-segment"] == "eu"
    assert features["t.pos"] == "1"
    assert "missing" not in features and "other" not in features


def test_vw_lines_match_what_vw_json_parser_builds() -> None:
    """The text lines and the DSJSON namespaces hash to the same features."""
    context = {
        "user.tier": "gold",
        "age": 31.0,
        "h.x-segment": "e u",
        "t.len": "15",
        "t.question": True,
        "t.caps": False,
    }
    text_vw = vowpalwabbit.Workspace("--cb_explore_adf --quiet --audit")
    json_vw = vowpalwabbit.Workspace("--cb_explore_adf --quiet --audit --json")
    lines = example_lines(context, arm_action_lines(SPEC.arms))
    doc = {
        **namespaces(context),
        "_multi": [{"a": action_namespace(a.name, a.features)} for a in SPEC.arms],
    }
    import orjson

    assert text_vw.predict(lines) == json_vw.predict(orjson.dumps(doc).decode())
    assert shared_line(context) == "shared |c user.tiergold age:31 h.x-segmente_u |t len15 question"


def test_floor_and_sampling() -> None:
    assert apply_floor([1.0, 0.0, 0.0], 0.05) == pytest.approx([0.9, 0.05, 0.05])
    assert apply_floor([0.5, 0.5], 0.0) == [0.5, 0.5]
    pmf = [0.7, 0.2, 0.1]
    counts = Counter(sample_index(pmf, f"e{i}", 3) for i in range(30_000))
    for index, p in enumerate(pmf):
        assert abs(counts[index] / 30_000 - p) < 0.015
    assert sample_index(pmf, "same", 1) == sample_index(pmf, "same", 1)
    assert sample_index([0.0, 1.0], "any", 0) == 1


def test_static_and_thompson_policies() -> None:
    actions = ActionSet.from_spec(SPEC)
    assert StaticPolicy({"a": 3, "b": 1}).probabilities({}, actions) == [0.75, 0.25]
    counts = BetaCounts()
    for _ in range(60):
        counts.update("a", 1.0)
        counts.update("b", 0.0)
    pmf = ThompsonPolicy(counts, version=4).probabilities({}, actions)
    assert pmf[0] > 0.99 and math.isclose(sum(pmf), 1.0)
    rng = np.random.default_rng(0)
    even = BetaCounts({"a": 3, "b": 3}, {"a": 3, "b": 3})
    assert ThompsonPolicy(even, 1).probabilities({}, actions) == pytest.approx([0.5, 0.5], abs=0.03)
    assert rng is not None
    assert BetaCounts.from_bytes(counts.to_bytes()).alpha == counts.alpha
    with pytest.raises(InvalidPolicy):
        BetaCounts.from_bytes(b"not json")


def test_model_validation_refuses_wrong_models() -> None:
    good = new_workspace(SPEC.policy, save_resume=True)
    for i in range(50):
        good.learn(example_lines({}, arm_action_lines(SPEC.arms), (i % 2, -float(i % 2), 0.5)))
    validate_model(SPEC, workspace_to_bytes(good))

    with pytest.raises(InvalidPolicy, match="not a loadable VW model"):
        validate_model(SPEC, b"garbage bytes")
    regression = vowpalwabbit.Workspace("--quiet")
    with pytest.raises(InvalidPolicy, match="cb_explore_adf"):
        validate_model(SPEC, workspace_to_bytes(regression))
    other = new_workspace(SPEC.policy)
    for i in range(50):
        other.learn(["shared |c x", f"0:{-(i % 2)}:0.5 |a armzzz", "|a armyyy"])
    with pytest.raises(InvalidPolicy, match="different action set"):
        validate_model(SPEC, workspace_to_bytes(other))


@pytest.mark.parametrize("kind", ["epsilon", "cover", "bag", "softmax", "squarecb"])
def test_every_exploration_type_builds_and_learns(kind: str) -> None:
    spec = parse_spec({**SPEC.model_dump(by_alias=True), "policy": {"exploration": {"type": kind}}})
    workspace = new_workspace(spec.policy, save_resume=True)
    lines = arm_action_lines(spec.arms)
    for i in range(400):
        workspace.learn(example_lines({"t.len": "5"}, lines, (i % 2, -1.0 if i % 2 else 0.0, 0.5)))
    pmf = workspace.predict(example_lines({"t.len": "5"}, lines))
    assert math.isclose(sum(pmf), 1.0, abs_tol=1e-5)
    assert pmf[1] > pmf[0]
    validate_model(spec, workspace_to_bytes(workspace))
