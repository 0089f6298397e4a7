"""Personalizer's configuration and model routes, answered by the control plane.

Under `/loops/{experiment}/personalizer[/{version}]`:
- `GET/PUT /configurations/service`: the ServiceConfiguration, mapped onto the spec and
  back (banditgate/personalizer.py says which field goes where);
- `GET/PUT/DELETE /configurations/policy`: `{"name", "arguments"}`, the VW arguments the
  experiment's policy is built with; PUT maps them onto `policy`, DELETE resets it;
- `GET /model`: the serving model's bytes; `PUT /model`: a VW model published as the next
  policy version through the same checks as `POST /v1/experiments/{e}/policies`.

Changes need an admin key (Bearer or `Ocp-Apim-Subscription-Key`). Errors are
Personalizer's `{"error": {"code", "message"}}`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from banditgate import keys
from banditgate.errors import BanditgateError, InvalidInput, UnknownPolicyVersion
from banditgate.personalizer import (
    apply_service_configuration,
    authorization,
    error_body,
    error_status,
    policy_arguments,
    service_configuration,
)
from banditgate.policy import vw_arguments
from banditgate.spec import PolicySpec
from experiments.lifecycle import Lifecycle, spec_document
from experiments.service import ControlService

_VERSION = re.compile(r"^v1\.0$|^v1\.1-preview\.\d+$")
MAX_MODEL_BYTES = 256 * 1024 * 1024

Handler = Callable[[str, Request, ControlService], Awaitable[Response]]


def routes() -> APIRouter:
    router = APIRouter(tags=["personalizer"], include_in_schema=False)

    def add(method: str, tail: str, handler: Handler, invalid: str, *, admin: bool) -> None:
        async def plain(experiment: str, request: Request) -> Response:
            return await _run(experiment, "", request, handler, invalid, admin)

        async def versioned(experiment: str, version: str, request: Request) -> Response:
            return await _run(experiment, version, request, handler, invalid, admin)

        base = "/loops/{experiment}/personalizer"
        router.add_api_route(base + tail, plain, methods=[method])
        router.add_api_route(base + "/{version}" + tail, versioned, methods=[method])

    add("GET", "/configurations/service", get_service, "BadRequest", admin=False)
    add("PUT", "/configurations/service", put_service, "InvalidServiceConfiguration", admin=True)
    add("GET", "/configurations/policy", get_policy, "BadRequest", admin=False)
    add("PUT", "/configurations/policy", put_policy, "InvalidPolicyConfiguration", admin=True)
    add("DELETE", "/configurations/policy", reset_policy, "BadRequest", admin=True)
    add("GET", "/model", get_model, "BadRequest", admin=False)
    add("PUT", "/model", put_model, "InvalidModelImportFormat", admin=True)
    return router


async def _run(
    experiment: str,
    version: str,
    request: Request,
    handler: Handler,
    invalid: str,
    admin: bool,
) -> Response:
    try:
        if version and not _VERSION.match(version):
            raise BanditgateError(f"no Personalizer API version {version!r} here", status=404)
        service: ControlService = request.app.state.control
        if admin:
            headers = {k.lower(): v for k, v in request.headers.items()}
            service.admin.check(authorization(headers))
        return await handler(experiment, request, service)
    except BanditgateError as error:
        return Response(
            orjson.dumps(error_body(error, invalid)),
            status_code=error_status(error),
            media_type="application/json",
        )


def _json(body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body), status_code=200, media_type="application/json")


async def _body(request: Request, limit: int = 1024 * 1024) -> Any:
    raw = await request.body()
    if len(raw) > limit:
        raise BanditgateError(f"request body exceeds {limit} bytes", status=413)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the body is not valid JSON: {exc}", field="body") from None


async def _side(service: ControlService, experiment: str) -> dict[str, Any]:
    raw = await service.redis.get(keys.personalizer_settings(experiment))
    side: dict[str, Any] = orjson.loads(raw) if raw else {}
    return side


async def get_service(experiment: str, request: Request, service: ControlService) -> Response:
    spec = await service.store.get(experiment)
    return _json(service_configuration(spec_document(spec), await _side(service, experiment)))


async def put_service(experiment: str, request: Request, service: ControlService) -> Response:
    config = await _body(request)
    spec = await service.store.get(experiment)
    document, side = apply_service_configuration(spec_document(spec), config)
    ops = Lifecycle(service.redis, service.stats)
    await ops.apply(experiment, document, reason="personalizer: service configuration")
    stored = {**await _side(service, experiment), **side}
    await service.redis.set(keys.personalizer_settings(experiment), orjson.dumps(stored))
    spec = await service.store.get(experiment)
    return _json(service_configuration(spec_document(spec), stored))


def _policy_view(name: str, policy: PolicySpec) -> dict[str, Any]:
    return {"name": name, "arguments": " ".join(vw_arguments(policy))}


async def get_policy(experiment: str, request: Request, service: ControlService) -> Response:
    spec = await service.store.get(experiment)
    return _json(_policy_view(spec.name, spec.policy))


async def put_policy(experiment: str, request: Request, service: ControlService) -> Response:
    contract = await _body(request)
    if not isinstance(contract, dict) or set(contract) - {"name", "arguments"}:
        raise InvalidInput('the policy is {"name", "arguments"}', field="body")
    spec = await service.store.get(experiment)
    document = spec_document(spec)
    document["policy"] = policy_arguments(contract.get("arguments"), document.get("policy", {}))
    ops = Lifecycle(service.redis, service.stats)
    await ops.apply(experiment, document, reason="personalizer: policy")
    spec = await service.store.get(experiment)
    return _json(_policy_view(str(contract.get("name") or spec.name), spec.policy))


async def reset_policy(experiment: str, request: Request, service: ControlService) -> Response:
    spec = await service.store.get(experiment)
    document = spec_document(spec)
    document["policy"] = {"learner": spec.policy.learner}
    ops = Lifecycle(service.redis, service.stats)
    await ops.apply(experiment, document, reason="personalizer: policy reset")
    spec = await service.store.get(experiment)
    return _json(_policy_view(spec.name, spec.policy))


async def get_model(experiment: str, request: Request, service: ControlService) -> Response:
    await service.store.get(experiment)
    version, model = await service.registry.load_current(experiment)
    if model is None:
        raise UnknownPolicyVersion(f"experiment {experiment!r} has no trained model yet")
    return Response(
        model,
        status_code=200,
        media_type="application/octet-stream",
        headers={"x-banditgate-policy-version": str(version)},
    )


async def put_model(experiment: str, request: Request, service: ControlService) -> Response:
    model = await request.body()
    if not model:
        raise InvalidInput("the body is a VW model file", field="body")
    if len(model) > MAX_MODEL_BYTES:
        raise BanditgateError(f"a model is at most {MAX_MODEL_BYTES} bytes", status=413)
    ops = Lifecycle(service.redis, service.stats)
    await ops.publish_policy(
        experiment, model, source="personalizer", note="imported with PUT /model"
    )
    return Response(status_code=204)
