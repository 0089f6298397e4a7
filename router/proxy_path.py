"""The `/proxy/{experiment}/{path}` tail, forwarded as the client sent it and kept inside the arm.

The path and query go to the backend raw: percent-encoding is preserved (`%3F` stays
a character of the path, never a query; `%20` stays `%20`), bytes that may not appear
in a request line are percent-encoded, and a `#` cannot end the path. A segment that
is, or decodes to, `.` or `..`, or that encodes `/` or `\\`, is refused with 400: a
backend that decodes before normalising must not be led out of the arm's base path.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from banditgate.errors import BadRequest

# RFC 3986 pchar plus "/" and "%" (kept as the client encoded it); everything else is encoded.
_PATH_SAFE = frozenset(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@/%"
)
_QUERY_SAFE = _PATH_SAFE | frozenset(b"?")


def _encode(raw: bytes, safe: frozenset[int]) -> str:
    if all(byte in safe for byte in raw):
        return raw.decode("ascii")
    return "".join(chr(b) if b in safe else f"%{b:02X}" for b in raw)


def proxy_tail(raw_path: bytes, query: bytes) -> tuple[str, str]:
    """(path, query) to append to the arm's URL, from the raw request target."""
    parts = raw_path.split(b"/", 3)  # b"", b"proxy", experiment, tail
    tail = parts[3] if len(parts) > 3 else b""
    for segment in tail.split(b"/"):
        decoded = unquote_to_bytes(segment)
        if decoded in (b".", b"..") or b"/" in decoded or b"\\" in decoded:
            raise BadRequest(
                f"path segment {segment.decode('latin-1')!r} would leave the arm's base path",
                field="path",
            )
    return _encode(tail, _PATH_SAFE), _encode(query, _QUERY_SAFE)
