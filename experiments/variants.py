"""Variant weights with SageMaker's semantics: a change names some variants, the rest keep theirs.

SageMaker keeps each variant's raw weight (and instance count) and splits traffic in
proportion; UpdateEndpointWeightsAndCapacities changes only the variants it lists.
Routers serve normalised weights (the rollout store's override), so the raw numbers
live beside them in `keys.variant_weights`, with the split they produced. When that
split is no longer the one served (a pause, a rollout step, DELETE /weights), the raw
numbers are stale and the served split (or the spec's own weights) is the start again.

`DesiredInstanceCount` is accepted and stored (and shown by DescribeEndpoint); the
router does not scale arms, so it changes no traffic.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from banditgate import keys
from banditgate.errors import InvalidInput
from banditgate.policy import default_weights
from banditgate.redis import Redis
from banditgate.spec import ExperimentSpec
from banditgate.store import ExperimentStore
from experiments.rollout_store import RolloutStore


class VariantWeight(BaseModel):
    """One entry of SageMaker's DesiredWeightsAndCapacities (our short names work too)."""

    model_config = ConfigDict(extra="forbid")

    variant: str = Field(validation_alias=AliasChoices("variant", "VariantName"))
    weight: float | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        validation_alias=AliasChoices("weight", "DesiredWeight"),
    )
    instances: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        validation_alias=AliasChoices("instances", "DesiredInstanceCount"),
    )


class SageMakerWeights(BaseModel):
    """UpdateEndpointWeightsAndCapacities' request body."""

    model_config = ConfigDict(extra="forbid")

    EndpointName: str | None = None
    DesiredWeightsAndCapacities: list[VariantWeight] = Field(min_length=1, max_length=10_000)


_LIST = TypeAdapter(list[VariantWeight])


def _invalid(error: ValidationError) -> InvalidInput:
    problems = []
    for item in error.errors():
        field = ".".join(str(part) for part in item.get("loc", ())) or "body"
        problems.append((field, item.get("msg", "invalid")))
    message = "; ".join(f"{field}: {reason}" for field, reason in problems)
    return InvalidInput(message, field=problems[0][0] if problems else "body")


def parse_weights(body: Any, experiment: str) -> list[VariantWeight]:
    """Our list `[{"variant", "weight"}]` or SageMaker's `{"DesiredWeightsAndCapacities": [...]}`."""
    try:
        if isinstance(body, list):
            if not body:
                raise InvalidInput("body: at least one variant", field="body")
            return _LIST.validate_python(body)
        if isinstance(body, dict):
            request = SageMakerWeights.model_validate(body)
            if request.EndpointName is not None and request.EndpointName != experiment:
                raise InvalidInput(
                    f"EndpointName: {request.EndpointName!r} is not this experiment "
                    f"({experiment!r})",
                    field="EndpointName",
                )
            return request.DesiredWeightsAndCapacities
    except ValidationError as exc:
        raise _invalid(exc) from None
    raise InvalidInput(
        "body: a list of variant weights, or SageMaker's {'DesiredWeightsAndCapacities': [...]}",
        field="body",
    )


class VariantStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.specs = ExperimentStore(redis)
        self.rollouts = RolloutStore(redis)

    async def current(self, name: str) -> tuple[ExperimentSpec, dict[str, Any], dict[str, Any]]:
        """(spec, the rollout view, {"weights": raw, "instances": counts}) as served now."""
        spec = await self.specs.get(name)
        view = await self.rollouts.view(name, spec=spec)
        raw = await self.redis.get(keys.variant_weights(name))
        record: dict[str, Any] = orjson.loads(raw) if raw is not None else {}
        served = view["weights"]
        instances = {a: int(record.get("instances", {}).get(a, 1)) for a in spec.arm_names}
        if record.get("served") == served and set(record.get("weights", {})) == set(spec.arm_names):
            weights = {a: float(record["weights"][a]) for a in spec.arm_names}
        elif served and await self.specs.get_override(name) is not None:
            weights = {a: float(served.get(a, 0.0)) for a in spec.arm_names}
        else:
            configured = default_weights(spec)
            weights = {a: float(configured.get(a, 0.0)) for a in spec.arm_names}
        return spec, view, {"weights": weights, "instances": instances}

    async def update(self, name: str, items: list[VariantWeight]) -> dict[str, Any]:
        """Change the listed variants only; returns the rollout view."""
        spec, view, record = await self.current(name)
        weights: dict[str, float] = dict(record["weights"])
        instances: dict[str, int] = dict(record["instances"])
        seen: set[str] = set()
        for index, item in enumerate(items):
            if item.variant not in weights:
                raise InvalidInput(
                    f"{index}.variant: unknown variant {item.variant!r}; "
                    f"variants are {spec.arm_names}",
                    field=f"{index}.variant",
                )
            if item.variant in seen:
                raise InvalidInput(
                    f"{index}.variant: {item.variant!r} is listed twice", field=f"{index}.variant"
                )
            seen.add(item.variant)
            if item.weight is not None:
                weights[item.variant] = item.weight
            if item.instances is not None:
                instances[item.variant] = item.instances
        if sum(weights.values()) <= 0:
            raise InvalidInput(
                "weight: the weights must add up to a positive number", field="weight"
            )
        if any(item.weight is not None for item in items):
            view = await self.rollouts.set_weights(name, weights)
        stored = {"weights": weights, "instances": instances, "served": view["weights"]}
        await self.redis.set(keys.variant_weights(name), orjson.dumps(stored))
        return view
