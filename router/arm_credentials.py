"""What an arm adds to a forwarded request: its own headers, its secrets, a SigV4 signature.

In order: client headers on the arm's `forward_headers` allow-list (nothing by default,
so a client's Authorization or cookies never reach an arm unasked), the arm's static
`headers`, `auth.bearer_env`'s token from the router's environment, and last, for
`protocol: sagemaker-runtime`, a SigV4 signature over all of it with credentials from
botocore's usual chain (environment, profile, container or instance role), refreshed
by botocore when they rotate.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from banditgate.errors import BanditgateError
from banditgate.spec import Arm, sagemaker_region

SIGNING_SERVICE = "sagemaker"


class ArmMisconfigured(BanditgateError):
    """The router cannot build this arm's request (a missing secret): the operator's to fix."""

    status = 500


def needs_credentials(arm: Arm) -> bool:
    return bool(
        arm.headers or arm.auth or arm.forward_headers or arm.protocol == "sagemaker-runtime"
    )


class ArmCredentials:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = environ if environ is not None else os.environ
        self._aws: Any = None

    def apply(
        self,
        arm: Arm,
        client_headers: Mapping[str, str],
        out: dict[str, str],
        *,
        method: str,
        url: str,
        body: bytes,
    ) -> dict[str, str]:
        for name in arm.forward_headers or ():
            value = client_headers.get(name)
            if value is not None:
                out[name] = value
        if arm.headers:
            out.update(arm.headers)
        if arm.auth is not None:
            token = self.environ.get(arm.auth.bearer_env)
            if not token:
                raise ArmMisconfigured(
                    f"arm {arm.name!r}: auth.bearer_env {arm.auth.bearer_env} is not set "
                    "in the router's environment"
                )
            out["authorization"] = f"Bearer {token}"
        if arm.protocol == "sagemaker-runtime":
            return self._sign(arm, out, method=method, url=url, body=body)
        return out

    def _credentials(self, arm: Arm) -> Any:
        if self._aws is None:
            import botocore.session  # the s3 extra; only sagemaker-runtime arms need it

            self._aws = botocore.session.get_session().get_credentials()
        if self._aws is None:
            raise ArmMisconfigured(
                f"arm {arm.name!r}: no AWS credentials found (environment, profile or role) "
                "to sign for sagemaker-runtime"
            )
        return self._aws.get_frozen_credentials()

    def _sign(
        self, arm: Arm, headers: dict[str, str], *, method: str, url: str, body: bytes
    ) -> dict[str, str]:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        region = (
            arm.region or sagemaker_region(arm.url or "") or "us-east-1"
        )  # the spec ensures one
        request = AWSRequest(method=method, url=url, data=body, headers=headers)
        SigV4Auth(self._credentials(arm), SIGNING_SERVICE, region).add_auth(request)
        return {name.lower(): value for name, value in request.headers.items()}
