"""The experiments API under /v1/experiments: HTTP in and out of experiments.lifecycle and stats.

Reads need a read or admin key once any key is set, every call that changes state an
admin key (`experiments.service.authorize`); a key limited to some experiments sees and
changes only those.
Spec bodies are JSON (or YAML with a YAML content type); PATCH takes an RFC 7396
merge patch. Responses carry the spec version as an ETag, and writes honour
If-Match with it (412 when someone else changed the experiment first).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Annotated, Any

import orjson
import yaml
from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from pydantic import BaseModel, Field

from banditgate import safe_yaml
from banditgate.errors import BadRequest, InvalidInput, PayloadTooLarge
from banditgate.spec import Arm, ExperimentSpec
from experiments.ledger import join_counters
from experiments.lifecycle import Lifecycle
from experiments.planning import PlanError, parse_split, plan
from experiments.service import Admin, ControlService, Service, check_scope, grant_of
from experiments.stats import summarize, timeseries, traffic

MAX_WINDOW_S = 90 * 86400

# Bodies are parsed by hand so that a bad spec gets our messages with field paths; the
# OpenAPI names their schemas (experiments.app puts them in components/schemas).
SCHEMAS = (ExperimentSpec, Arm)


def _body(model: type, description: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}},
                "application/yaml": {
                    "schema": {"type": "string", "description": "The same, as YAML."}
                },
            },
        }
    }


_SPEC_BODY = _body(ExperimentSpec, "An experiment spec (JSON, or YAML with a YAML content type).")
_ARM_BODY = _body(Arm, "The arm to add.")
_PATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/merge-patch+json": {
                "schema": {"type": "object", "description": "RFC 7396: null deletes a field."}
            }
        },
    }
}


class PolicyUpload(BaseModel):
    """A model published by hand (`banditgate policy publish`, `banditgate train --from`)."""

    model: str = Field(
        description="The model file in base64: a VW model (learner vw) or JSON counts "
        "(thompson, static).",
        min_length=1,
    )
    note: str = Field(default="", max_length=2000, description="Free text kept with the version.")
    source: str = Field(
        default="manual",
        pattern=r"^[a-z][a-z0-9-]{0,31}$",
        description="Where the model came from (manual, warmstart, ...).",
    )
    n_examples: int = Field(default=0, ge=0, description="Examples it learned from.")
    ope: dict[str, Any] = Field(
        default_factory=dict, description="Off-policy numbers to keep with the version."
    )
    activate: bool = Field(default=True, description="Serve it at once.")
    force: bool = Field(
        default=False,
        description="Publish even if the off-policy check on recent joined examples finds it "
        "significantly worse than the serving policy (refused with 409 otherwise).",
    )

    def model_bytes(self) -> bytes:
        try:
            return base64.b64decode(self.model, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput("model: not valid base64", field="model") from None


def service(request: Request) -> ControlService:
    control: ControlService = request.app.state.control
    return control


def get_lifecycle(service: Service) -> Lifecycle:
    return Lifecycle(service.redis, service.stats)


Ops = Annotated[Lifecycle, Depends(get_lifecycle)]
Name = Annotated[str, Path(description="Experiment name.")]
IfMatch = Annotated[str | None, Header(description="Spec version the change is based on.")]
WindowS = Annotated[
    float | None,
    Query(gt=0, le=MAX_WINDOW_S, description="Only the last N seconds (default: all)."),
]


async def read_body(request: Request, *, required: bool = True) -> Any:
    limit = service(request).settings.max_spec_bytes
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body: more than {limit} bytes", field="body")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        if required:
            raise InvalidInput("body: a JSON document is required", field="body")
        return None
    content_type = request.headers.get("content-type", "application/json")
    try:
        if "yaml" in content_type:
            return safe_yaml.load(raw)
        return orjson.loads(raw)
    except safe_yaml.YAMLLimit as exc:
        raise BadRequest(f"body: YAML refused: {exc}", field="body") from None
    except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
        raise InvalidInput(f"body: not valid JSON/YAML: {exc}", field="body") from None


def parse_if_match(value: str | None) -> int | None:
    if value is None or value.strip() == "*":
        return None
    text = value.strip().removeprefix("W/").strip('"')
    try:
        return int(text)
    except ValueError:
        raise InvalidInput(
            "If-Match: a spec version (an ETag from GET)", field="If-Match"
        ) from None


def _written(entry: dict[str, Any], response: Response) -> dict[str, Any]:
    response.headers["etag"] = f'"{entry["version"]}"'
    return {"name": entry["spec"]["name"], **entry}


def routes() -> APIRouter:
    router = APIRouter(prefix="/v1/experiments", tags=["experiments"])

    @router.get("")
    async def list_experiments(request: Request, ops: Ops) -> dict[str, Any]:
        """Every experiment with its mode, arms, status and versions."""
        grant = grant_of(request)
        summaries = await ops.summaries()
        return {"experiments": [s for s in summaries if grant.allows(str(s["name"]))]}

    @router.post("", status_code=201, dependencies=[Admin], openapi_extra=_SPEC_BODY)
    async def create_experiment(request: Request, response: Response, ops: Ops) -> dict[str, Any]:
        """Create an experiment (409 if the name is taken)."""
        body = await read_body(request)
        service(request).arm_hosts.check_document(body)
        if isinstance(body, dict) and isinstance(body.get("name"), str):
            check_scope(grant_of(request), body["name"])
        elif grant_of(request).scope is not None:
            raise InvalidInput("name: required", field="name")
        entry = await ops.create(body, reason="api: create")
        return _written(entry, response)

    @router.get("/{name}")
    async def get_experiment(name: Name, response: Response, ops: Ops) -> dict[str, Any]:
        """The spec, its version, and whether traffic is paused or ended."""
        described = await ops.describe(name)
        response.headers["etag"] = f'"{described["version"]}"'
        return described

    @router.put("/{name}", dependencies=[Admin], openapi_extra=_SPEC_BODY)
    async def put_experiment(
        name: Name, request: Request, response: Response, ops: Ops, if_match: IfMatch = None
    ) -> dict[str, Any]:
        """Create or replace (201 when created; `unchanged` when the spec is the same)."""
        body = await read_body(request)
        service(request).arm_hosts.check_document(body)
        entry = await ops.apply(name, body, if_match=parse_if_match(if_match), reason="api: put")
        if entry.get("created"):
            response.status_code = 201
        return _written(entry, response)

    @router.patch("/{name}", dependencies=[Admin], openapi_extra=_PATCH_BODY)
    async def patch_experiment(
        name: Name, request: Request, response: Response, ops: Ops, if_match: IfMatch = None
    ) -> dict[str, Any]:
        """Change some fields with a JSON merge patch."""
        body = await read_body(request)
        service(request).arm_hosts.check_document(body)
        entry = await ops.patch(name, body, if_match=parse_if_match(if_match))
        return _written(entry, response)

    @router.delete("/{name}", status_code=204, dependencies=[Admin])
    async def delete_experiment(name: Name, ops: Ops, if_match: IfMatch = None) -> Response:
        """Delete the experiment and all of its keys (streams, policies, history)."""
        await ops.delete(name, if_match=parse_if_match(if_match))
        return Response(status_code=204)

    @router.post("/{name}/arms", status_code=201, dependencies=[Admin], openapi_extra=_ARM_BODY)
    async def add_arm(name: Name, request: Request, response: Response, ops: Ops) -> dict[str, Any]:
        """Add an arm while the experiment runs; an A/B test makes room for its weight."""
        body = await read_body(request)
        service(request).arm_hosts.check_arm(body, where="body")
        entry = await ops.add_arm(name, body)
        return _written(entry, response)

    @router.delete("/{name}/arms/{arm}", dependencies=[Admin])
    async def remove_arm(name: Name, arm: str, response: Response, ops: Ops) -> dict[str, Any]:
        """Remove an arm (409 for the last one or one the spec still names)."""
        entry = await ops.remove_arm(name, arm)
        return _written(entry, response)

    @router.post("/{name}/pause", dependencies=[Admin])
    async def pause(name: Name, request: Request, ops: Ops) -> dict[str, Any]:
        """Freeze traffic at static weights: `{"weights": {...}}`, or the split served now."""
        body = await read_body(request, required=False)
        if body is not None and not isinstance(body, dict):
            raise InvalidInput("body: an object like {'weights': {...}}", field="body")
        record = await ops.pause(name, (body or {}).get("weights"))
        return {
            "name": name,
            "status": "paused" if record.get("paused") else "ended",
            "override": record,
        }

    @router.post("/{name}/resume", dependencies=[Admin])
    async def resume(name: Name, ops: Ops) -> dict[str, Any]:
        """Undo pause or end."""
        record = await ops.resume(name)
        return {"name": name, "status": "running", "override": record}

    @router.post("/{name}/end", dependencies=[Admin])
    async def end(name: Name, request: Request, ops: Ops) -> dict[str, Any]:
        """End with a winner: `{"winner": "<arm>"}` gets 100% of the traffic."""
        body = await read_body(request)
        winner = body.get("winner") if isinstance(body, dict) else None
        record = await ops.end(name, winner)
        return {"name": name, "status": "ended", "winner": winner, "override": record}

    @router.get("/{name}/versions")
    async def versions(name: Name, ops: Ops) -> dict[str, Any]:
        """Every spec version: when, why, and the field-level changes."""
        return {"name": name, "versions": await ops.versions(name)}

    @router.get("/{name}/versions/{version}")
    async def spec_version(name: Name, version: int, ops: Ops) -> dict[str, Any]:
        """One spec version in full."""
        return await ops.spec_version(name, version)

    @router.post("/{name}/versions/{version}/restore", dependencies=[Admin])
    async def restore(name: Name, version: int, response: Response, ops: Ops) -> dict[str, Any]:
        """Apply an earlier spec version again (recorded as a new version)."""
        return _written(await ops.restore(name, version), response)

    @router.get("/{name}/policies")
    async def policies(name: Name, ops: Ops) -> dict[str, Any]:
        """Policy versions with lineage and off-policy numbers, the current one, and activations."""
        return {"name": name, **await ops.policies(name)}

    @router.post("/{name}/policies", status_code=201, dependencies=[Admin])
    async def publish_policy(name: Name, upload: PolicyUpload, ops: Ops) -> dict[str, Any]:
        """Publish a model as the next policy version, after checking it fits the experiment's
        learner and arms (422 if not); routers swap it in at once unless `activate` is false."""
        published = await ops.publish_policy(
            name,
            upload.model_bytes(),
            source=upload.source,
            note=upload.note,
            ope=upload.ope,
            n_examples=upload.n_examples,
            activate=upload.activate,
            force=upload.force,
        )
        return {"name": name, **published}

    @router.post("/{name}/policies/{version}/activate", dependencies=[Admin])
    async def activate(
        name: Name,
        version: int,
        ops: Ops,
        force: Annotated[
            bool, Query(description="Serve it even if significantly worse off-policy (else 409).")
        ] = False,
    ) -> dict[str, Any]:
        """Serve this policy version (a rollback when it is an earlier one), after the same
        off-policy check as a publish."""
        return {"name": name, **await ops.activate_policy(name, version, force=force)}

    @router.get("/{name}/stats")
    async def stats(
        name: Name,
        service: Service,
        window_s: WindowS = None,
        rolling_s: Annotated[float, Query(gt=0, le=MAX_WINDOW_S)] = 300.0,
        alpha: Annotated[float, Query(gt=0, lt=1)] = 0.05,
    ) -> dict[str, Any]:
        """Per-arm and per-experiment statistics (see experiments.stats for the methods)."""
        return await experiment_stats(
            service, name, window_s=window_s, rolling_s=rolling_s, alpha=alpha
        )

    @router.get("/{name}/plan")
    async def plan_experiment(
        name: Name,
        service: Service,
        effect: Annotated[float, Query(description="Difference to detect (treatment - control).")],
        rate: Annotated[
            float | None, Query(description="Control rate (default: the control's so far).")
        ] = None,
        split: Annotated[
            str | None,
            Query(description='"control/treatment" percentages or the treatment share.'),
        ] = None,
        units: Annotated[int | None, Query(ge=1, description="A committed sample size.")] = None,
        alpha: Annotated[float, Query(gt=0, lt=1)] = 0.05,
        power: Annotated[float, Query(gt=0, lt=1)] = 0.8,
    ) -> dict[str, Any]:
        """Fixed-horizon power, MDE and units to significance at the experiment's current traffic."""
        spec = await service.store.get(name)
        override = await service.store.get_override(name)
        async with service.stats.open(spec) as ledger:
            now = await asyncio.to_thread(traffic, spec, ledger, override)
        try:
            share = parse_split(split) if split is not None else now["share"]
            control_rate = rate if rate is not None else now["control_rate"]
            if control_rate is None:
                raise PlanError("rate", "no rewards for the control yet: give the rate")
            if share is None:
                raise PlanError("split", "no configured split to read: give the split")
            out = plan(
                rate=control_rate,
                effect=effect,
                share=share,
                alpha=alpha,
                power=power,
                units=units,
                units_per_hour=now["units_per_hour"],
            )
        except PlanError as exc:
            raise InvalidInput(str(exc), field=exc.field) from None
        return {"experiment": name, **now, **out}

    @router.get("/{name}/timeseries")
    async def series(
        name: Name,
        service: Service,
        window_s: Annotated[float, Query(gt=0, le=MAX_WINDOW_S)] = 3600.0,
        step_s: Annotated[float | None, Query(ge=10, le=86400)] = None,
        rolling_s: Annotated[float | None, Query(gt=0, le=MAX_WINDOW_S)] = None,
    ) -> dict[str, Any]:
        """Per time step and arm: traffic share, probabilities, mean and rolling reward."""
        return await experiment_timeseries(
            service, name, window_s=window_s, step_s=step_s, rolling_s=rolling_s
        )

    return router


async def experiment_stats(service: ControlService, name: str, **options: Any) -> dict[str, Any]:
    spec = await service.store.get(name)
    override = await service.store.get_override(name)
    counters = await join_counters(service.redis, name)
    async with service.stats.open(spec) as ledger:
        return await asyncio.to_thread(
            summarize, spec, ledger, override=override, counters=counters, **options
        )


async def experiment_timeseries(
    service: ControlService, name: str, **options: Any
) -> dict[str, Any]:
    spec = await service.store.get(name)
    async with service.stats.open(spec) as ledger:
        return await asyncio.to_thread(timeseries, spec, ledger, **options)
