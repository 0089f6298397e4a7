"""Lua scripts: loaded from the `.lua` files shipped beside their modules, and their arguments.

A script gets the wire names it writes (fields, counters, reasons) from `banditgate.contracts`
as one MessagePack argument built by `lua_names`, and reads them by role: with
`lua_names(joined=JoinedField, counter=JoinCounter)` as ARGV[n],
`local N = cmsgpack.unpack(ARGV[n])`, then `N.joined.decision`, `N.counter.rewards_late`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from functools import cache
from importlib.resources import files

from redis.commands.core import AsyncScript

from banditgate.redis import Redis


@cache
def lua_source(package: str, name: str) -> str:
    """The text of `name` (a `.lua` file) in `package`'s directory."""
    return files(package).joinpath(name).read_text(encoding="utf-8")


def register(redis: Redis, package: str, name: str) -> AsyncScript:
    """A callable script (EVALSHA, loaded on first use) for `name` in `package`."""
    return redis.register_script(lua_source(package, name))


def lua_names(**groups: type[StrEnum]) -> bytes:
    """`{group: {member name in lower case: wire name}}` as MessagePack, for `cmsgpack.unpack`."""
    return msgpack_map(
        {
            group: {member.name.lower(): member.value for member in enum}
            for group, enum in groups.items()
        }
    )


def msgpack_strings(items: Sequence[bytes]) -> bytes:
    """A MessagePack array of strings, for a script's `cmsgpack.unpack`.

    One argument per batch instead of several per message: encoding hundreds of thousands
    of separate command arguments was most of the joiner's own CPU time.
    """
    parts = [b"\xdd" + len(items).to_bytes(4, "big")]
    for item in items:
        size = len(item)  # the headers written out here: this loop is the joiner's hot path
        if size < 32:
            parts.append(_FIXSTR[size])
        elif size < 256:
            parts.append(b"\xd9" + bytes((size,)))
        elif size < 65536:
            parts.append(b"\xda" + size.to_bytes(2, "big"))
        else:
            parts.append(b"\xdb" + size.to_bytes(4, "big"))
        parts.append(item)
    return b"".join(parts)


def msgpack_map(mapping: Mapping[str, str | Mapping[str, str]]) -> bytes:
    """A MessagePack map of strings (values: strings or maps of strings)."""
    parts = [b"\xdf" + len(mapping).to_bytes(4, "big")]
    for key, value in mapping.items():
        raw = key.encode()
        parts += (_str_header(len(raw)), raw)
        if isinstance(value, str):
            raw = value.encode()
            parts += (_str_header(len(raw)), raw)
        else:
            parts.append(msgpack_map(value))
    return b"".join(parts)


def _str_header(size: int) -> bytes:
    if size < 32:
        return _FIXSTR[size]
    if size < 256:
        return b"\xd9" + bytes((size,))
    if size < 65536:
        return b"\xda" + size.to_bytes(2, "big")
    return b"\xdb" + size.to_bytes(4, "big")


_FIXSTR = [bytes((0xA0 | size,)) for size in range(32)]
