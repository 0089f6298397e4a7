from __future__ import annotations

import math

import orjson
import pytest
from scipy import stats

from banditgate.redis import Redis
from experiments.planning import (
    SEQUENTIAL_FACTOR,
    PlanError,
    fixed_horizon_units,
    minimum_detectable_effect,
    parse_split,
    plan,
    power_at,
)
from tests.experiments.conftest import Control, decision, spec_doc, write_decisions, write_joined
from tests.experiments.test_cli import run


def test_fixed_horizon_units_power_and_mde_agree_with_the_z_test_formula() -> None:
    # 0.10 -> 0.12 on a 50/50 split: (1.96 + 0.8416)^2 (0.12 * 0.88 / 0.5 + 0.1 * 0.9 / 0.5) / 0.02^2
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    exact = z * z * (0.12 * 0.88 / 0.5 + 0.09 / 0.5) / 0.02**2
    units = fixed_horizon_units(0.1, 0.02)
    assert units.total == math.ceil(exact) == 7677
    assert (units.treatment, units.control) == (3839, 3838)
    assert power_at(units.total, 0.1, 0.02) == pytest.approx(0.8, abs=1e-3)
    assert minimum_detectable_effect(units.total, 0.1) == pytest.approx(0.02, abs=1e-4)
    # An unequal split costs units: 90/10 needs far more than 50/50.
    assert fixed_horizon_units(0.1, 0.02, share=0.1).total > 2.5 * units.total
    # A decrease is planned like an increase of the same size, with its own variance.
    assert fixed_horizon_units(0.1, -0.02).total == math.ceil(
        z * z * (0.08 * 0.92 / 0.5 + 0.09 / 0.5) / 0.02**2
    )
    out = plan(rate=0.1, effect=0.02, units=20_000, units_per_hour=1000.0)
    assert out["sequential"]["units"] == math.ceil(SEQUENTIAL_FACTOR * 7677)
    assert out["hours"]["fixed_horizon"] == pytest.approx(7.677)
    assert out["at_units"]["power"] > 0.99


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: fixed_horizon_units(0.1, 0.0), "effect"),
        (lambda: fixed_horizon_units(0.0, 0.02), "rate"),
        (lambda: fixed_horizon_units(1.2, 0.02), "rate"),
        (lambda: fixed_horizon_units(0.9, 0.2), "effect"),
        (lambda: fixed_horizon_units(0.1, 0.02, share=1.0), "split"),
        (lambda: parse_split("100/0"), "split"),
        (lambda: parse_split("0/100"), "split"),
        (lambda: parse_split("0"), "split"),
        (lambda: parse_split("half"), "split"),
    ],
)
def test_bad_input_names_its_field(call, field) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PlanError) as caught:
        call()
    assert caught.value.field == field


def test_split_parsing() -> None:
    assert parse_split("90/10") == pytest.approx(0.1)
    assert parse_split("50/50") == 0.5
    assert parse_split("0.25") == 0.25


async def test_plan_route_reads_the_running_experiment(
    control: Control, name: str, redis: Redis
) -> None:
    await control.call("POST", "/v1/experiments", spec_doc(name, mode="ab"))
    rows = [decision(name, "ab"[i % 2], [0.5, 0.5], mode="ab", event_id=str(i)) for i in range(40)]
    await write_decisions(redis, name, rows)
    for i, d in enumerate(rows):
        # Control (a, the first arm) rewarded in 5 of its 20 units.
        reward = 1.0 if d["chosen"] == "a" and i % 8 == 0 else 0.0
        await write_joined(redis, name, d, reward)
    data = await control.get(f"/v1/experiments/{name}/plan?effect=0.05&units=4000")
    assert (data["control"], data["treatment"]) == ("a", "b")
    assert data["rate"] == pytest.approx(0.25)  # the control's rate so far
    assert data["share"] == 0.5  # the configured split
    assert data["units_per_hour"] > 0
    expected = fixed_horizon_units(0.25, 0.05)
    assert data["fixed_horizon"]["units"] == expected.total
    assert data["hours"]["fixed_horizon"] == pytest.approx(expected.total / data["units_per_hour"])
    assert data["at_units"]["units"] == 4000
    # Given explicitly, rate and split win over what the experiment shows.
    data = await control.get(f"/v1/experiments/{name}/plan?effect=0.02&rate=0.1&split=80/20")
    assert data["fixed_horizon"]["units"] == fixed_horizon_units(0.1, 0.02, share=0.2).total

    # Bad input: 422 naming the field, in the one error shape.
    for query, field in (
        ("effect=0", "effect"),
        ("effect=0.02&rate=0", "rate"),
        ("effect=0.02&rate=1.5", "rate"),
        ("effect=0.02&split=100/0", "split"),
        ("effect=0.02&split=0/100", "split"),
    ):
        status, body = await control.call("GET", f"/v1/experiments/{name}/plan?{query}")
        assert status == 422, (query, body)
        assert body["error"]["field"] == field, (query, body)
        assert body["error"]["type"] == "InvalidInput"


async def test_plan_command(control: Control, name: str) -> None:
    result = await run(
        control, "exp", "plan", "--rate", "0.1", "--effect", "0.02", "--units", "5000"
    )
    assert result.exit_code == 0, result.output
    assert "7677" in result.output and "fixed horizon" in result.output
    assert "at 5000 units: power 61.8%" in result.output
    result = await run(control, "exp", "plan", "--rate", "0.1", "--effect", "0.02", "--json")
    assert orjson.loads(result.output)["sequential"]["units"] == math.ceil(SEQUENTIAL_FACTOR * 7677)
    result = await run(control, "exp", "plan", "--rate", "0.1", "--effect", "0")
    assert result.exit_code == 2 and "--effect" in result.output
    await control.call("POST", "/v1/experiments", spec_doc(name, mode="ab"))
    result = await run(control, "exp", "plan", "-e", name, "--effect", "0.02", "--rate", "0.1")
    assert result.exit_code == 0, result.output
    assert "7677" in result.output
    result = await run(control, "exp", "plan", "-e", name, "--effect", "0.02", "--split", "100/0")
    assert result.exit_code == 1 and "split" in result.output


async def test_stats_show_the_units_each_comparison_still_needs(
    control: Control, name: str, redis: Redis
) -> None:
    await control.call("POST", "/v1/experiments", spec_doc(name, mode="ab"))
    rows = [decision(name, "ab"[i % 2], [0.5, 0.5], mode="ab", event_id=str(i)) for i in range(200)]
    await write_decisions(redis, name, rows)
    for i, d in enumerate(rows):
        # Control a: 10 of 100 rewarded; treatment b: 15 of 100.
        hit = i % 20 == 0 or (i % 20 == 2) if d["chosen"] == "a" else i % 20 in (1, 3, 5)
        await write_joined(redis, name, d, 1.0 if hit else 0.0)
    stats = await control.get(f"/v1/experiments/{name}/stats")
    (comparison,) = stats["sequential"]["comparisons"]
    assert comparison["significant"] is False
    plan_ = comparison["to_significance"]
    assert plan_["effect"] == pytest.approx(comparison["effect"])
    expected = fixed_horizon_units(comparison["mean_control"], comparison["effect"], share=0.5)
    # Bonferroni over one comparison: alpha 0.05.
    assert plan_["fixed_horizon_units"] == expected.total
    assert plan_["sequential_units"] == math.ceil(SEQUENTIAL_FACTOR * expected.total)
    assert plan_["remaining_units"] == plan_["sequential_units"] - 200
    assert plan_["remaining_hours"] > 0
