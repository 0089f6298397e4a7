"""Open Inference Protocol (KServe v2) specifics: error shape, binary tensors, metadata, readiness.

- Errors are `{"error": "<message>"}` (the protocol's shape; tritonclient prints it).
- Binary tensor extension: the body is a JSON header of `Inference-Header-Content-Length`
  bytes followed by raw tensor bytes. The router reads the JSON part only when the
  experiment's context reads the body, and forwards the whole body untouched.
- Model metadata is a ready arm's own; a model is ready when at least one arm is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import orjson

from banditgate.errors import BadRequest, BanditgateError
from banditgate.spec import Arm
from router.backends import Backend

Header = tuple[bytes, bytes]

HEADER_LENGTH = "inference-header-content-length"
# Request headers a v2 arm needs to read the body as the client sent it.
REQUEST_HEADERS = ("content-type", HEADER_LENGTH, "content-encoding", "accept-encoding")
RESPONSE_HEADERS = (HEADER_LENGTH.encode(), b"content-encoding")
PROBE_TIMEOUT_S = 2.0


def header_length(body: bytes, headers: Mapping[str, str]) -> int | None:
    """The binary extension's JSON header length, checked against the body; None without it."""
    declared = headers.get(HEADER_LENGTH)
    if declared is None:
        return None
    try:
        length = int(declared)
    except ValueError:
        raise BadRequest(
            f"Inference-Header-Content-Length: not a number: {declared!r}",
            field="Inference-Header-Content-Length",
        ) from None
    if length < 0 or length > len(body):
        raise BadRequest(
            f"Inference-Header-Content-Length: {length} is beyond the body's {len(body)} bytes",
            field="Inference-Header-Content-Length",
        )
    return length


def json_part(body: bytes, headers: Mapping[str, str]) -> bytes:
    """The JSON part of an inference request: all of it, or the binary extension's header."""
    length = header_length(body, headers)
    return body if length is None else body[:length]


def is_binary(headers: Mapping[str, str]) -> bool:
    return HEADER_LENGTH in headers


def forward_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {name: headers[name] for name in REQUEST_HEADERS if name in headers}


def versioned(model: str, version: str | None) -> str:
    return f"/v2/models/{model}/versions/{version}" if version else f"/v2/models/{model}"


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def error_message(error: BanditgateError) -> str:
    if error.field is not None and error.field not in error.message:
        return f"{error.field}: {error.message}"
    return error.message


def server_metadata() -> dict[str, Any]:
    try:
        number = version("banditgate")
    except PackageNotFoundError:  # running from a source tree
        number = "0"
    # Binary tensors pass through to the arms untouched; they must support the extension.
    return {"name": "banditgate", "version": number, "extensions": ["binary_tensor_data"]}


def probe_path(arm: Arm, model_version: str | None) -> str:
    """Where an arm says it is ready, per protocol."""
    if arm.protocol == "v2":
        return f"{versioned(arm.model_name, model_version)}/ready"
    if arm.protocol == "sagemaker":
        return "/ping"
    return "/"


async def arm_ready(backend: Backend, arm: Arm, model_version: str | None) -> bool:
    try:
        response = await backend.send(
            arm,
            f"{arm.url}{probe_path(arm, model_version)}",
            b"",
            {},
            method="GET",
            timeout_s=min(arm.timeout_s or PROBE_TIMEOUT_S, PROBE_TIMEOUT_S),
        )
    except BanditgateError:
        return False
    if arm.protocol == "http":
        return response.status < 500
    return response.status == 200


async def ready_arms(backend: Backend, arms: list[Arm], model_version: str | None) -> list[Arm]:
    answers = await asyncio.gather(*(arm_ready(backend, arm, model_version) for arm in arms))
    return [arm for arm, ready in zip(arms, answers, strict=True) if ready]


async def model_metadata(
    backend: Backend, experiment: str, arms: list[Arm], model_version: str | None
) -> dict[str, Any] | None:
    """The first v2 arm's own metadata (in spec order), named as the experiment."""
    for arm in arms:
        if arm.protocol != "v2":
            continue
        try:
            response = await backend.send(
                arm,
                f"{arm.url}{versioned(arm.model_name, model_version)}",
                b"",
                {},
                method="GET",
                timeout_s=min(arm.timeout_s or PROBE_TIMEOUT_S, PROBE_TIMEOUT_S),
            )
        except BanditgateError:
            continue
        if response.status != 200:
            continue
        try:
            metadata = orjson.loads(response.body)
        except orjson.JSONDecodeError:
            continue
        if isinstance(metadata, dict):
            metadata["name"] = experiment
            return metadata
    return None
