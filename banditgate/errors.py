"""One error hierarchy; each error knows the HTTP status it maps to."""

from __future__ import annotations

from typing import Any


class BanditgateError(Exception):
    status: int = 500
    # Seconds a client should wait before trying again: sent as `Retry-After` when set.
    retry_after_s: int | None = None

    def __init__(
        self, message: str, status: int | None = None, *, field: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if status is not None:
            self.status = status

    @property
    def type(self) -> str:
        return type(self).__name__

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return {"error": body}


class BadRequest(BanditgateError):
    status = 400


class MalformedJSON(BadRequest):
    pass


class UnknownVariant(BadRequest):
    pass


class Unauthorized(BanditgateError):
    status = 401


class Forbidden(BanditgateError):
    status = 403


class UnknownExperiment(BanditgateError):
    status = 404

    def __init__(self, name: str) -> None:
        super().__init__(f"no experiment named {name!r}")
        self.name = name


class UnknownPolicyVersion(BanditgateError):
    status = 404


class Conflict(BanditgateError):
    status = 409


class PayloadTooLarge(BanditgateError):
    status = 413


class InvalidSpec(BanditgateError):
    status = 422


class InvalidInput(BanditgateError):
    status = 422


class InvalidPolicy(BanditgateError):
    status = 422


class BackendError(BanditgateError):
    status = 502


class BackendTimeout(BackendError):
    status = 504


class NoHealthyArm(BanditgateError):
    status = 503
    retry_after_s = 1


class Overloaded(BanditgateError):
    """Too many requests in flight: try again after the response's Retry-After."""

    status = 503


class NotReady(BanditgateError):
    status = 503
    retry_after_s = 1


class TooManyRequests(BanditgateError):
    status = 429
    retry_after_s = 1

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, retry_after_s)


def retry_after_headers(error: BanditgateError) -> dict[str, str]:
    """`Retry-After` for an error a client may retry (503, 429), else nothing."""
    if error.retry_after_s is None:
        return {}
    return {"retry-after": str(error.retry_after_s)}
