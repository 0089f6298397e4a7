"""The Personalizer surface's shared contract: paths, durations, settings and errors."""

from __future__ import annotations

import pytest

from banditgate.errors import BanditgateError, InvalidInput, UnknownExperiment
from banditgate.personalizer import (
    PersonalizerPath,
    apply_service_configuration,
    error_body,
    error_status,
    format_duration,
    parse_duration,
    parse_path,
    policy_arguments,
)


@pytest.mark.parametrize(
    ("path", "parsed"),
    [
        ("/loops/news/personalizer/v1.0/rank", PersonalizerPath("news", "v1.0", ("rank",))),
        (
            "/loops/news/personalizer/v1.1-preview.3/multislot/events/e1/activate",
            PersonalizerPath("news", "v1.1-preview.3", ("multislot", "events", "e1", "activate")),
        ),
        (
            "/loops/news/personalizer/events/e1/reward",
            PersonalizerPath("news", "", ("events", "e1", "reward")),
        ),
        ("/loops/news/personalizer/v1.0", None),
        ("/loops/news/other/v1.0/rank", None),
        ("/loops//personalizer/rank", None),
        ("/v1/experiments/news/rank", None),
    ],
)
def test_paths(path, parsed):
    assert parse_path(path) == parsed


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("PT10M", 600), ("P1DT2H", 93600), ("PT5S", 5), ("PT0.5S", 0.5), ("00:10:00", 600)],
)
def test_durations_read_and_written_back(text, seconds):
    assert parse_duration(text, "rewardWaitTime") == seconds
    assert parse_duration(format_duration(seconds), "x") == seconds


@pytest.mark.parametrize("bad", ["10 minutes", "P", "PT", 600, None])
def test_a_bad_duration_names_the_field(bad):
    with pytest.raises(InvalidInput, match="rewardWaitTime: a duration") as raised:
        parse_duration(bad, "rewardWaitTime")
    assert raised.value.field == "rewardWaitTime"


def test_service_configuration_refuses_what_it_cannot_honour():
    spec = {"name": "x", "arms": [{"name": "a"}]}
    with pytest.raises(InvalidInput, match="unknown keys"):
        apply_service_configuration(spec, {"rewardWaitTim": "PT1M"})
    with pytest.raises(InvalidInput, match="explorationPercentage"):
        apply_service_configuration(spec, {"explorationPercentage": 20})
    with pytest.raises(InvalidInput, match="learningMode"):
        apply_service_configuration(spec, {"learningMode": "Apprentice"})
    with pytest.raises(InvalidInput, match="rewardAggregation"):
        apply_service_configuration(spec, {"rewardAggregation": "median"})
    document, side = apply_service_configuration(
        spec, {"rewardAggregation": "average", "logRetentionDays": -1}
    )
    assert document["reward"] == {"aggregation": "mean"}
    assert side == {"logRetentionDays": -1}


def test_policy_arguments_map_and_refuse():
    policy = policy_arguments(
        "--cb_explore_adf --quiet --cover 4 --psi 0.2 --CB_type dr -l 0.1 -b 20 -q UA", {}
    )
    assert policy["exploration"] == {"type": "cover", "n": 4, "psi": 0.2}
    assert policy["cb_type"] == "dr"
    assert policy["learning_rate"] == 0.1
    assert policy["vw_args"] == "-b 20"
    assert policy["interactions"] == ["ca", "ta"]
    with pytest.raises(InvalidInput, match="--cb_explore_adf"):
        policy_arguments("--epsilon 0.1", {})
    with pytest.raises(InvalidInput, match="--marginal is not supported"):
        policy_arguments("--cb_explore_adf --marginal x", {})
    with pytest.raises(InvalidInput, match="--epsilon needs a number"):
        policy_arguments("--cb_explore_adf --epsilon lots", {})


def test_errors_in_personalizers_shape():
    invalid = InvalidInput("actions: at most 50", field="actions")
    assert error_status(invalid) == 400
    assert error_body(invalid, "InvalidRankRequest") == {
        "error": {
            "code": "InvalidRankRequest",
            "message": "actions: at most 50",
            "target": "actions",
        }
    }
    missing = UnknownExperiment("news")
    assert error_status(missing) == 404
    assert error_body(missing, "InvalidRankRequest")["error"]["code"] == "ResourceNotFound"
    assert error_body(BanditgateError("x", 403), "X")["error"]["code"] == "InvalidApiAccess"
    assert error_body(BanditgateError("x", 503), "X")["error"]["code"] == "OperationNotAllowed"
