"""One error hierarchy; each error knows the HTTP status it maps to."""

from __future__ import annotations

from typing import Any


class BanditgateError(Exception):
    status: int = 500

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


class Overloaded(BanditgateError):
    """Too many requests in flight: try again after the response's Retry-After."""

    status = 503


class NotReady(BanditgateError):
    status = 503
