"""SageMaker Runtime's error shapes, as botocore models them (sagemaker-runtime service-2.json).

botocore takes the error code from `x-amzn-errortype` and the message from the body's
`Message`, then raises the modelled exception class of that code. What each case
becomes, and why:

- the request is wrong (bad JSON, unknown variant, too large, unknown endpoint):
  `ValidationError` 400, as SageMaker answers "Endpoint ... not found";
- the arm answered 4xx/5xx, timed out or could not be reached: `ModelError` 424 with
  `OriginalStatusCode` / `OriginalMessage` when the arm answered. Not retried by
  botocore: retrying a failed model call only repeats it (and, before event ids were
  kept per client request, made a fresh decision each time);
- no arm can answer, or this router is at its in-flight limit: `ServiceUnavailable` 503
  (retried by botocore, as it should be);
- the experiment exists but this router has not loaded it yet: `ModelNotReadyException`;
- anything else: `InternalFailure` 500.
"""

from __future__ import annotations

from typing import Any

import orjson

from banditgate.errors import (
    BackendError,
    BackendTimeout,
    BanditgateError,
    NoHealthyArm,
    NotReady,
    Overloaded,
    UnknownExperiment,
)

Header = tuple[bytes, bytes]

VALIDATION_ERROR = "ValidationError"
MODEL_ERROR = "ModelError"
MODEL_NOT_READY = "ModelNotReadyException"
SERVICE_UNAVAILABLE = "ServiceUnavailable"
INTERNAL_FAILURE = "InternalFailure"

STATUS = {
    VALIDATION_ERROR: 400,
    MODEL_ERROR: 424,
    MODEL_NOT_READY: 429,
    SERVICE_UNAVAILABLE: 503,
    INTERNAL_FAILURE: 500,
}

# SageMaker quotes the model's own message whole; a bound keeps one error response small.
MAX_ORIGINAL_MESSAGE = 64 * 1024


class SageMakerError(Exception):
    """An error in SageMaker Runtime's shape: code, message and the code's extra members."""

    def __init__(self, code: str, message: str, **members: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.members = members

    @property
    def status(self) -> int:
        return STATUS[self.code]

    def body(self) -> bytes:
        return orjson.dumps({"Message": self.message, **self.members})

    def headers(self, request_id: str | None = None) -> list[Header]:
        out = [(b"x-amzn-errortype", self.code.encode())]
        if request_id is not None:
            out.append((b"x-amzn-requestid", request_id.encode("latin-1")))
        return out


def from_error(error: BaseException, *, loading: bool = False) -> SageMakerError:
    """The SageMaker error a router error stands for; `loading`: the endpoint is known, not loaded."""
    if isinstance(error, SageMakerError):
        return error
    if not isinstance(error, BanditgateError):
        return SageMakerError(
            INTERNAL_FAILURE, "the router failed to handle the request; see its log"
        )
    kind = error.type
    if isinstance(error, UnknownExperiment):
        if loading:
            return SageMakerError(
                MODEL_NOT_READY,
                f"endpoint {error.name!r} exists but its policy is not loaded (yet); "
                "see the router's log",
                ErrorCode=kind,
            )
        return SageMakerError(VALIDATION_ERROR, f"Endpoint {error.name} not found.", ErrorCode=kind)
    if isinstance(error, NoHealthyArm | Overloaded):
        return SageMakerError(SERVICE_UNAVAILABLE, error.message, ErrorCode=kind)
    if isinstance(error, NotReady):
        return SageMakerError(MODEL_NOT_READY, error.message, ErrorCode=kind)
    if isinstance(error, BackendError) and getattr(error, "no_arm_left", False):
        # Every arm was tried (or is out): retrying later is right, and botocore does.
        return SageMakerError(
            SERVICE_UNAVAILABLE, f"no arm can answer: {error.message}", ErrorCode=kind
        )
    if isinstance(error, BackendTimeout):
        variant = getattr(error, "variant", None) or "the arm"
        return SageMakerError(
            MODEL_ERROR,
            f"Your invocation timed out while waiting for a response from {variant}: "
            f"{error.message}",
            ErrorCode="MODEL_INVOCATION_TIME_EXCEEDED",
        )
    if isinstance(error, BackendError):
        return SageMakerError(MODEL_ERROR, error.message, ErrorCode="MODEL_UNREACHABLE")
    if 400 <= error.status < 500:
        message = error.message
        if error.field is not None and error.field not in message:
            message = f"{error.field}: {message}"
        return SageMakerError(VALIDATION_ERROR, message, ErrorCode=kind)
    return SageMakerError(INTERNAL_FAILURE, error.message, ErrorCode=kind)


def model_error(status: int, body: bytes, variant: str) -> SageMakerError:
    """The arm answered `status` >= 400: SageMaker's ModelError quoting it."""
    original = body[:MAX_ORIGINAL_MESSAGE].decode("utf-8", errors="replace")
    side = "client" if status < 500 else "server"
    return SageMakerError(
        MODEL_ERROR,
        f'Received {side} error ({status}) from {variant} with message "{original}".',
        ErrorCode=f"{side.upper()}_ERROR_FROM_MODEL",
        OriginalStatusCode=status,
        OriginalMessage=original,
    )


async def send_error(
    send: Any,
    error: SageMakerError,
    *,
    event_id: str | None = None,
    variant: str | None = None,
) -> None:
    """Answer with `error` on an ASGI `send`, with our event id and variant when known."""
    body = error.body()
    headers = error.headers(event_id)
    if event_id is not None:
        headers.append((b"x-banditgate-event-id", event_id.encode("latin-1")))
    if variant is not None:
        headers.append((b"x-banditgate-variant", variant.encode("latin-1")))
    headers.append((b"content-type", b"application/json"))
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
