"""HTTP for weights and rollouts.

PUT    /v1/experiments/{name}/weights             [{"variant": "A", "weight": 95}, ...]
DELETE /v1/experiments/{name}/weights             back to the mode's own allocation
GET    /v1/experiments/{name}/rollout             {"phase", "weights", "history", ...}
POST   /v1/experiments/{name}/rollout/{action}    pause|resume|promote|abort|switch|rollback|restart
                                                  optional body {"reason": "..."}
Calls that change state need the admin key.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from banditgate.errors import InvalidInput
from experiments.rollout import ACTIONS, Action
from experiments.rollout_store import RolloutStore
from experiments.service import Admin, Service

PREFIX = "/v1/experiments/{name}"


class VariantWeight(BaseModel):
    """One entry of SageMaker's DesiredWeightsAndCapacities (its field names work too)."""

    model_config = ConfigDict(extra="forbid")

    variant: str = Field(validation_alias=AliasChoices("variant", "VariantName"))
    weight: float = Field(
        ge=0, allow_inf_nan=False, validation_alias=AliasChoices("weight", "DesiredWeight")
    )


class ActionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=500)


def _weights(items: list[VariantWeight], arms: list[str]) -> dict[str, float]:
    """The full weight vector: arms not listed get 0."""
    out: dict[str, float] = {}
    for index, item in enumerate(items):
        if item.variant not in arms:
            raise InvalidInput(
                f"{index}.variant: unknown variant {item.variant!r}; variants are {arms}",
                field=f"{index}.variant",
            )
        if item.variant in out:
            raise InvalidInput(
                f"{index}.variant: {item.variant!r} is listed twice", field=f"{index}.variant"
            )
        out[item.variant] = item.weight
    if sum(out.values()) <= 0:
        raise InvalidInput("weight: the weights must add up to a positive number", field="weight")
    return out


def routes() -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["rollouts"])

    @router.put("/weights", dependencies=[Admin])
    async def put_weights(
        name: str,
        service: Service,
        items: Annotated[list[VariantWeight], Body(min_length=1)],
    ) -> dict[str, Any]:
        spec = await service.store.get(name)
        weights = _weights(items, spec.arm_names)
        return await RolloutStore(service.redis).set_weights(name, weights)

    @router.delete("/weights", dependencies=[Admin])
    async def delete_weights(name: str, service: Service) -> dict[str, Any]:
        return await RolloutStore(service.redis).clear_weights(name)

    @router.get("/rollout")
    async def get_rollout(name: str, service: Service) -> dict[str, Any]:
        return await RolloutStore(service.redis).view(name)

    for action in ACTIONS:
        router.add_api_route(
            f"/rollout/{action}",
            _action_endpoint(action),
            methods=["POST"],
            dependencies=[Admin],
            name=f"rollout_{action}",
            summary=f"{action.capitalize()} the rollout",
        )
    return router


def _action_endpoint(action: Action) -> Any:
    async def endpoint(
        name: str, service: Service, request: Annotated[ActionRequest | None, Body()] = None
    ) -> dict[str, Any]:
        reason = request.reason if request is not None else None
        return await RolloutStore(service.redis).act(name, action, reason=reason)

    return endpoint
