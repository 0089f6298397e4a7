"""`POST /v1/export/flush`: the running exporters close their open files now."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from banditgate.export_flush import request_flush
from experiments.service import Admin, Service

MAX_FLUSH_WAIT_S = 300.0


class FlushRequest(BaseModel):
    experiment: str | None = Field(default=None, description="Only this experiment's files.")
    timeout_s: float = Field(
        default=30.0, gt=0, le=MAX_FLUSH_WAIT_S, description="Seconds to wait for the exporters."
    )


def routes() -> APIRouter:
    router = APIRouter(prefix="/v1/export", tags=["export"])

    @router.post("/flush", dependencies=[Admin])
    async def flush(service: Service, body: FlushRequest | None = None) -> dict[str, Any]:
        """Ask every running exporter to export what is joined and close its files; wait for
        their answers. `complete` is true only once every example joined before the request
        is in a closed file (`unexported` counts those that are not, at `timeout_s`)."""
        request = body or FlushRequest()
        if request.experiment is not None:
            await service.store.get(request.experiment)  # 404 for a name that is not one
        outcome = await request_flush(
            service.redis,
            experiments=await service.store.names(),
            experiment=request.experiment,
            timeout_s=request.timeout_s,
        )
        return outcome.to_dict()

    return router
