"""Checking an AWS Signature Version 4 request against our admin keys, so boto3 can sign with one.

A boto3 client configured with any access key id and an admin key as its secret access
key signs each request; the signature is recomputed here with each admin key and
compared in constant time. The timestamp must be within `MAX_SKEW_S` of ours (as AWS
requires), so a captured request stops working after a few minutes.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import time
from collections.abc import Mapping
from urllib.parse import parse_qsl, quote

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW_S = 15 * 60
UNSIGNED = "UNSIGNED-PAYLOAD"


class SignatureError(Exception):
    """`code` is the error code AWS JSON services answer (with `status`)."""

    def __init__(self, code: str, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def signing_key(secret: bytes, date: str, region: str, service: str) -> bytes:
    key = _hmac(b"AWS4" + secret, date)
    key = _hmac(key, region)
    key = _hmac(key, service)
    return _hmac(key, "aws4_request")


def _parse(authorization: str) -> tuple[list[str], list[str], str]:
    """(credential parts, signed header names, signature) of an Authorization header."""
    algorithm, _, rest = authorization.partition(" ")
    if algorithm != ALGORITHM:
        raise SignatureError(
            "IncompleteSignatureException", f"Authorization: only {ALGORITHM} is accepted", 400
        )
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, _, value = part.strip().partition("=")
        fields[name] = value
    try:
        credential = fields["Credential"].split("/")
        signed = fields["SignedHeaders"].split(";")
        signature = fields["Signature"]
    except KeyError as exc:
        raise SignatureError(
            "IncompleteSignatureException", f"Authorization: {exc.args[0]} is missing", 400
        ) from None
    if len(credential) != 5 or credential[4] != "aws4_request":
        raise SignatureError(
            "IncompleteSignatureException", "Authorization: malformed Credential", 400
        )
    return credential, signed, signature


def _canonical_query(query: str) -> str:
    pairs = sorted(
        (quote(k, safe="-_.~"), quote(v, safe="-_.~"))
        for k, v in parse_qsl(query, keep_blank_values=True)
    )
    return "&".join(f"{k}={v}" for k, v in pairs)


def verify(
    *,
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
    secrets: list[bytes],
    now: float | None = None,
) -> str:
    """Raise SignatureError unless one of `secrets` signed this request; returns its region.

    `headers`: names lowercased, as received.
    """
    authorization = headers.get("authorization")
    if not authorization:
        raise SignatureError(
            "MissingAuthenticationTokenException", "the request is not signed (no Authorization)"
        )
    credential, signed, signature = _parse(authorization)
    _, date, region, service, _ = credential
    amz_date = headers.get("x-amz-date", "")
    try:
        stamp = calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))
    except ValueError:
        raise SignatureError(
            "IncompleteSignatureException", "X-Amz-Date: missing or not YYYYMMDDTHHMMSSZ", 400
        ) from None
    if abs((now if now is not None else time.time()) - stamp) > MAX_SKEW_S:
        raise SignatureError(
            "InvalidSignatureException", "Signature expired: X-Amz-Date is too far from now"
        )
    if not amz_date.startswith(date) or "host" not in signed:
        raise SignatureError(
            "IncompleteSignatureException", "the signature must cover host and the date", 400
        )
    missing = [name for name in signed if name not in headers]
    if missing:
        raise SignatureError(
            "IncompleteSignatureException", f"signed headers missing: {missing}", 400
        )
    body_hash = hashlib.sha256(body).hexdigest()
    declared = headers.get("x-amz-content-sha256")
    if declared is not None and declared != UNSIGNED and declared != body_hash:
        raise SignatureError("InvalidSignatureException", "the body does not match its hash")
    canonical = "\n".join(
        [
            method,
            quote(path, safe="/-_.~"),
            _canonical_query(query),
            "".join(f"{name}:{' '.join(headers[name].split())}\n" for name in signed),
            ";".join(signed),
            declared or body_hash,
        ]
    )
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join(
        [ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    matched = False
    for secret in secrets:
        expected = hmac.new(
            signing_key(secret, date, region, service), to_sign.encode(), hashlib.sha256
        ).hexdigest()
        matched |= hmac.compare_digest(expected, signature)
    if not matched:
        raise SignatureError(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided "
            "(sign with an admin key as the secret access key)",
        )
    return region
