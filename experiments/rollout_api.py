"""HTTP for weights and rollouts.

PUT    /v1/experiments/{name}/weights             [{"variant": "A", "weight": 95}, ...] or SageMaker's
                                                  {"DesiredWeightsAndCapacities": [{"VariantName",
                                                  "DesiredWeight", "DesiredInstanceCount"}]};
                                                  variants not listed keep their weight
DELETE /v1/experiments/{name}/weights             back to the mode's own allocation
GET    /v1/experiments/{name}/rollout             {"phase", "weights", "history", ...}
POST   /v1/experiments/{name}/rollout/{action}    pause|resume|promote|abort|switch|rollback|restart
                                                  optional body {"reason": "..."}
Calls that change state need the admin key.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body
from pydantic import BaseModel, ConfigDict, Field

from experiments.rollout import ACTIONS, Action
from experiments.rollout_store import RolloutStore
from experiments.service import Admin, Service
from experiments.variants import VariantStore, parse_weights

PREFIX = "/v1/experiments/{name}"
_WEIGHTS_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {"type": "array", "items": {"type": "object"}, "minItems": 1},
                        {"type": "object", "required": ["DesiredWeightsAndCapacities"]},
                    ]
                }
            }
        },
    }
}


class ActionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=500)


def routes() -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["rollouts"])

    @router.put("/weights", dependencies=[Admin], openapi_extra=_WEIGHTS_BODY)
    async def put_weights(
        name: str, service: Service, body: Annotated[Any, Body()] = None
    ) -> dict[str, Any]:
        """Change the listed variants' weights; the others keep theirs (SageMaker's semantics)."""
        items = parse_weights(body, name)
        return await VariantStore(service.redis).update(name, items)

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
