"""SageMaker's control-plane API (AWS JSON 1.1) for the calls people script against endpoints.

`POST /` with `X-Amz-Target: SageMaker.<Operation>`, so `boto3.client("sagemaker",
endpoint_url=...)` works: DescribeEndpoint, ListEndpoints, DescribeEndpointConfig and
UpdateEndpointWeightsAndCapacities. An experiment is an endpoint (and its endpoint
config, of the same name); its arms are the production variants.

Reads are open, as on the rest of the control plane. UpdateEndpointWeightsAndCapacities
needs an admin key: boto3 signs with SigV4, so configure the client with any access
key id and an admin key as the secret access key (experiments/sigv4.py checks the
signature); `Authorization: Bearer <key>` works too.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from banditgate.errors import BanditgateError
from banditgate.policy import default_weights
from banditgate.spec import ExperimentSpec
from experiments.service import ControlService, Service
from experiments.sigv4 import SignatureError, verify
from experiments.variants import VariantStore, parse_weights

CONTENT_TYPE = "application/x-amz-json-1.1"
TARGET_PREFIX = "SageMaker."
ACCOUNT = "000000000000"
DEFAULT_REGION = "us-east-1"
MAX_RESULTS = 100


class AwsError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def _reply(body: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=CONTENT_TYPE)


def _error(error: AwsError) -> Response:
    response = _reply({"__type": error.code, "message": error.message}, error.status)
    response.headers["x-amzn-errortype"] = error.code
    return response


def _region(request: Request) -> str:
    """The region the client signed for (for ARNs), else us-east-1."""
    authorization = request.headers.get("authorization", "")
    _, _, credential = authorization.partition("Credential=")
    parts = credential.split(",")[0].split("/")
    return parts[2] if len(parts) == 5 and parts[2] else DEFAULT_REGION


def _string(body: dict[str, Any], field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value:
        raise AwsError("ValidationException", f"{field}: a non-empty string is required")
    return value


class Operations:
    def __init__(self, service: ControlService, region: str) -> None:
        self.service = service
        self.region = region
        self.variants = VariantStore(service.redis)

    def arn(self, kind: str, name: str) -> str:
        return f"arn:aws:sagemaker:{self.region}:{ACCOUNT}:{kind}/{name}"

    async def _spec(self, name: str, kind: str) -> ExperimentSpec:
        spec = await self.service.store.find(name)
        if spec is None:
            raise AwsError(
                "ValidationException", f'Could not find {kind} "{self.arn(kind, name)}".'
            )
        return spec

    async def _times(self, name: str) -> tuple[float, float]:
        history = await self.service.store.history(name)
        if not history:
            return 0.0, 0.0
        return history[0]["ts_ms"] / 1000, history[-1]["ts_ms"] / 1000

    async def _status(self, name: str) -> str:
        override = await self.service.store.get_override(name)
        return "OutOfService" if override is not None and override.get("ended") else "InService"

    async def describe_endpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        name = _string(body, "EndpointName")
        await self._spec(name, "endpoint")
        spec, view, record = await self.variants.current(name)
        created, modified = await self._times(name)
        served: dict[str, float] = view["weights"]
        variants = []
        for arm in spec.arm_names:
            weight = record["weights"][arm]
            if served and served.get(arm, 0.0) == 0.0:
                weight = 0.0  # a rollout or pause took this arm's traffic away
            instances = record["instances"][arm]
            variants.append(
                {
                    "VariantName": arm,
                    "CurrentWeight": weight,
                    "DesiredWeight": weight,
                    "CurrentInstanceCount": instances,
                    "DesiredInstanceCount": instances,
                }
            )
        return {
            "EndpointName": name,
            "EndpointArn": self.arn("endpoint", name),
            "EndpointConfigName": name,
            "ProductionVariants": variants,
            "EndpointStatus": await self._status(name),
            "CreationTime": created,
            "LastModifiedTime": modified,
        }

    async def describe_endpoint_config(self, body: dict[str, Any]) -> dict[str, Any]:
        name = _string(body, "EndpointConfigName")
        spec = await self._spec(name, "endpoint-config")
        _, modified = await self._times(name)
        weights = default_weights(spec)
        return {
            "EndpointConfigName": name,
            "EndpointConfigArn": self.arn("endpoint-config", name),
            "ProductionVariants": [
                {
                    "VariantName": arm.name,
                    "ModelName": arm.model_name,
                    "InitialInstanceCount": 1,
                    "InitialVariantWeight": weights.get(arm.name, 0.0),
                }
                for arm in spec.arms
            ],
            "CreationTime": modified,
        }

    async def list_endpoints(self, body: dict[str, Any]) -> dict[str, Any]:
        contains = body.get("NameContains")
        status_equals = body.get("StatusEquals")
        sort_by = body.get("SortBy", "CreationTime")
        order = body.get("SortOrder", "Descending")
        if sort_by not in ("Name", "CreationTime", "Status"):
            raise AwsError("ValidationException", "SortBy: Name, CreationTime or Status")
        if order not in ("Ascending", "Descending"):
            raise AwsError("ValidationException", "SortOrder: Ascending or Descending")
        limit = body.get("MaxResults", MAX_RESULTS)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_RESULTS:
            raise AwsError("ValidationException", f"MaxResults: 1 to {MAX_RESULTS}")
        token = body.get("NextToken", "0")
        if not isinstance(token, str) or not token.isdigit():
            raise AwsError("ValidationException", "NextToken: not a token this service gave")
        summaries = []
        for name in await self.service.store.names():
            if isinstance(contains, str) and contains not in name:
                continue
            status = await self._status(name)
            if status_equals is not None and status != status_equals:
                continue
            created, modified = await self._times(name)
            summaries.append(
                {
                    "EndpointName": name,
                    "EndpointArn": self.arn("endpoint", name),
                    "CreationTime": created,
                    "LastModifiedTime": modified,
                    "EndpointStatus": status,
                }
            )
        key = {"Name": "EndpointName", "CreationTime": "CreationTime", "Status": "EndpointStatus"}
        summaries.sort(
            key=lambda s: (s[key[sort_by]], s["EndpointName"]), reverse=order == "Descending"
        )
        start = int(token)
        page = summaries[start : start + limit]
        out: dict[str, Any] = {"Endpoints": page}
        if start + limit < len(summaries):
            out["NextToken"] = str(start + limit)
        return out

    async def update_weights(self, body: dict[str, Any]) -> dict[str, Any]:
        name = _string(body, "EndpointName")
        await self._spec(name, "endpoint")
        items = parse_weights(body, name)
        await self.variants.update(name, items)
        return {"EndpointArn": self.arn("endpoint", name)}


Handler = Callable[[Operations, dict[str, Any]], Awaitable[dict[str, Any]]]
# Operation -> (handler, changes state).
OPERATIONS: dict[str, tuple[Handler, bool]] = {
    "DescribeEndpoint": (Operations.describe_endpoint, False),
    "DescribeEndpointConfig": (Operations.describe_endpoint_config, False),
    "ListEndpoints": (Operations.list_endpoints, False),
    "UpdateEndpointWeightsAndCapacities": (Operations.update_weights, True),
}


async def _check_admin(request: Request, service: ControlService, body: bytes) -> None:
    if not service.admin.enabled:
        return
    authorization = request.headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        try:
            service.admin.check(authorization)
        except BanditgateError as exc:
            raise AwsError("UnrecognizedClientException", exc.message, 403) from None
        return
    try:
        verify(
            method=request.method,
            path=request.url.path,
            query=request.url.query,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            secrets=service.admin.keys,
        )
    except SignatureError as exc:
        raise AwsError(exc.code, exc.message, exc.status) from None


def routes() -> APIRouter:
    router = APIRouter(tags=["sagemaker"])

    @router.post("/", include_in_schema=False)
    async def sagemaker(request: Request, service: Service) -> Response:
        try:
            return await _handle(request, service)
        except AwsError as error:
            return _error(error)
        except BanditgateError as error:
            status = 400 if error.status < 500 else 500
            code = "ValidationException" if status == 400 else "InternalFailure"
            return _error(AwsError(code, error.message, status))

    return router


async def _handle(request: Request, service: ControlService) -> Response:
    target = request.headers.get("x-amz-target", "")
    operation = target.removeprefix(TARGET_PREFIX)
    if not target.startswith(TARGET_PREFIX) or operation not in OPERATIONS:
        raise AwsError(
            "UnknownOperationException",
            f"X-Amz-Target: {target or 'missing'}; this endpoint answers "
            f"{', '.join(TARGET_PREFIX + name for name in OPERATIONS)}",
        )
    handler, writes = OPERATIONS[operation]
    raw = await request.body()
    if writes:
        await _check_admin(request, service, raw)
    try:
        body = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError as exc:
        raise AwsError("SerializationException", f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise AwsError("SerializationException", "the body is a JSON object")
    result = await handler(Operations(service, _region(request)), body)
    response = _reply(result)
    response.headers["x-amzn-requestid"] = str(uuid.uuid4())
    return response
