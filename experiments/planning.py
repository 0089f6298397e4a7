"""Sample-size planning for an A/B test: fixed-horizon power, minimum detectable effect, units.

A fixed-horizon two-sided z-test of two rates (unpooled variance) at level alpha
detects a true difference `effect` between the treatment (rate + effect, a
`share` of the traffic) and the control (rate) with probability `power` after

    n = (z_{1-alpha/2} + z_power)^2 (p1 (1 - p1) / share + p0 (1 - p0) / (1 - share)) / effect^2

units in all. The anytime-valid test (experiments.sequential) may be looked at
after every unit; it needs more units for the same power: 1.6-1.95 n by the
simulation in bench/stats.py (BENCHMARKS.md, "Statistics"), and planning uses
the worst, SEQUENTIAL_FACTOR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

DEFAULT_ALPHA = 0.05
DEFAULT_POWER = 0.8
# The standard library's normal, not scipy's: the CLI imports this module, and
# scipy.stats costs seconds at every command's start (and every worker process's).
_NORMAL = NormalDist()
# Units the sequential test needs for 80% power over those of the fixed-horizon z-test:
# the largest ratio bench/stats.py measured for effects 0.01-0.1 at rates 0.05-0.5.
SEQUENTIAL_FACTOR = 1.95


class PlanError(ValueError):
    """A planning input outside its domain; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Units:
    total: int
    treatment: int
    control: int


def _check(rate: float, share: float, alpha: float, power: float) -> None:
    if not (0.0 < rate < 1.0) or not math.isfinite(rate):
        raise PlanError("rate", "must lie strictly between 0 and 1")
    if not (0.0 < share < 1.0) or not math.isfinite(share):
        raise PlanError(
            "split", "every arm needs some traffic: the treatment share must lie in (0, 1)"
        )
    if not (0.0 < alpha < 1.0):
        raise PlanError("alpha", "must lie strictly between 0 and 1")
    if not (0.0 < power < 1.0):
        raise PlanError("power", "must lie strictly between 0 and 1")


def _variance(rate: float, effect: float, share: float) -> float:
    treated = min(max(rate + effect, 0.0), 1.0)
    return treated * (1 - treated) / share + rate * (1 - rate) / (1 - share)


def fixed_horizon_units(
    rate: float,
    effect: float,
    *,
    share: float = 0.5,
    alpha: float = DEFAULT_ALPHA,
    power: float = DEFAULT_POWER,
) -> Units:
    """Units the fixed-horizon z-test needs to detect `effect` with probability `power`."""
    _check(rate, share, alpha, power)
    if effect == 0 or not math.isfinite(effect):
        raise PlanError("effect", "must be a non-zero difference")
    if not (0.0 < rate + effect < 1.0):
        raise PlanError("effect", "rate + effect must lie strictly between 0 and 1")
    z = _NORMAL.inv_cdf(1 - alpha / 2) + _NORMAL.inv_cdf(power)
    total = math.ceil(z * z * _variance(rate, effect, share) / (effect * effect))
    treatment = math.ceil(total * share)
    return Units(total, treatment, total - treatment)


def power_at(
    units: int, rate: float, effect: float, *, share: float = 0.5, alpha: float = DEFAULT_ALPHA
) -> float:
    """Power of the fixed-horizon z-test after `units` units in all."""
    _check(rate, share, alpha, 0.5)
    if units <= 0:
        return 0.0
    se = math.sqrt(_variance(rate, effect, share) / units)
    z = _NORMAL.inv_cdf(1 - alpha / 2)
    shift = abs(effect) / se
    return (1 - _NORMAL.cdf(z - shift)) + _NORMAL.cdf(-z - shift)


def minimum_detectable_effect(
    units: int,
    rate: float,
    *,
    share: float = 0.5,
    alpha: float = DEFAULT_ALPHA,
    power: float = DEFAULT_POWER,
) -> float | None:
    """The smallest increase over `rate` the z-test detects with `power` after `units` units."""
    _check(rate, share, alpha, power)
    if units <= 0:
        return None
    lo, hi = 0.0, 1.0 - rate
    if power_at(units, rate, hi * (1 - 1e-12), share=share, alpha=alpha) < power:
        return None
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if power_at(units, rate, mid, share=share, alpha=alpha) >= power:
            hi = mid
        else:
            lo = mid
    return hi


def plan(
    *,
    rate: float,
    effect: float,
    share: float = 0.5,
    alpha: float = DEFAULT_ALPHA,
    power: float = DEFAULT_POWER,
    units: int | None = None,
    units_per_hour: float | None = None,
) -> dict[str, Any]:
    """Everything `banditgate exp plan` and the dashboard show."""
    fixed = fixed_horizon_units(rate, effect, share=share, alpha=alpha, power=power)
    sequential = math.ceil(SEQUENTIAL_FACTOR * fixed.total)
    out: dict[str, Any] = {
        "rate": rate,
        "effect": effect,
        "relative_effect": effect / rate,
        "share": share,
        "alpha": alpha,
        "power": power,
        "fixed_horizon": {
            "units": fixed.total,
            "treatment": fixed.treatment,
            "control": fixed.control,
            "test": "two-sided z-test of two rates, analysed once at the planned sample size",
        },
        "sequential": {
            "units": sequential,
            "factor": SEQUENTIAL_FACTOR,
            "test": "anytime-valid betting test, may be looked at after every unit",
        },
        "units_per_hour": units_per_hour,
        "hours": None,
        "at_units": None,
    }
    if units_per_hour is not None and units_per_hour > 0:
        out["hours"] = {
            "fixed_horizon": fixed.total / units_per_hour,
            "sequential": sequential / units_per_hour,
        }
    if units is not None:
        out["at_units"] = {
            "units": units,
            "power": power_at(units, rate, effect, share=share, alpha=alpha),
            "minimum_detectable_effect": minimum_detectable_effect(
                units, rate, share=share, alpha=alpha, power=power
            ),
        }
    return out


def parse_split(text: str | float) -> float:
    """The treatment's share from "control/treatment" percentages ("90/10") or a share (0.1)."""
    try:
        if isinstance(text, str) and "/" in text:
            control, treatment = (float(x) for x in text.split("/", 1))
            if control < 0 or treatment < 0 or control + treatment <= 0:
                raise ValueError
            share = treatment / (control + treatment)
        else:
            share = float(text)
    except ValueError:
        raise PlanError("split", 'expected "control/treatment" percentages or a share') from None
    if not (0.0 < share < 1.0):
        raise PlanError("split", "gives an arm no traffic: both arms need a share in (0, 1)")
    return share
