"""AWS event-stream framing (application/vnd.amazon.eventstream), the encoding side.

A message: total length, headers length, prelude CRC32 (big-endian uint32 each), headers,
payload, message CRC32. Headers here are strings only (type 7): name length (uint8),
name, 7, value length (uint16), value.
"""

from __future__ import annotations

import struct
import zlib

CONTENT_TYPE = b"application/vnd.amazon.eventstream"
_STRING = 7


def _headers(headers: list[tuple[str, str]]) -> bytes:
    out = bytearray()
    for name, value in headers:
        raw_name, raw_value = name.encode(), value.encode()
        out += struct.pack("!B", len(raw_name)) + raw_name
        out += struct.pack("!BH", _STRING, len(raw_value)) + raw_value
    return bytes(out)


def message(headers: list[tuple[str, str]], payload: bytes) -> bytes:
    encoded = _headers(headers)
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack("!II", total, len(encoded))
    prelude += struct.pack("!I", zlib.crc32(prelude))
    body = prelude + encoded + payload
    return body + struct.pack("!I", zlib.crc32(body))


def event(event_type: str, payload: bytes, content_type: str = "application/octet-stream") -> bytes:
    return message(
        [(":event-type", event_type), (":content-type", content_type), (":message-type", "event")],
        payload,
    )


def exception(exception_type: str, payload: bytes) -> bytes:
    return message(
        [
            (":exception-type", exception_type),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        payload,
    )
