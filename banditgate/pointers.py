"""Pointers into JSON documents: `features[0]`, `a.b[2].c`, or RFC 6901 `/a/b/2`."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]|(\.)")

Step = str | int


class PointerError(ValueError):
    pass


@lru_cache(maxsize=1024)
def parse_pointer(pointer: str) -> tuple[Step, ...]:
    if not pointer:
        raise PointerError("empty pointer")
    if pointer.startswith("/"):
        steps: list[Step] = []
        for raw in pointer[1:].split("/"):
            part = raw.replace("~1", "/").replace("~0", "~")
            steps.append(int(part) if part.isdigit() else part)
        return tuple(steps)
    steps = []
    pos = 0
    expect_key = True
    while pos < len(pointer):
        match = _TOKEN.match(pointer, pos)
        if match is None:
            raise PointerError(f"cannot parse pointer {pointer!r} at position {pos}")
        key, index, dot = match.groups()
        if key is not None:
            if not expect_key:
                raise PointerError(f"missing '.' before {key!r} in pointer {pointer!r}")
            steps.append(key)
            expect_key = False
        elif index is not None:
            steps.append(int(index))
            expect_key = False
        elif dot is not None:
            if expect_key:
                raise PointerError(f"empty key in pointer {pointer!r}")
            expect_key = True
        pos = match.end()
    if expect_key:
        raise PointerError(f"pointer {pointer!r} ends with '.'")
    return tuple(steps)


_MISSING = object()


def resolve(document: Any, pointer: str, default: Any = None) -> Any:
    value = document
    for step in parse_pointer(pointer):
        if isinstance(step, int):
            if isinstance(value, list) and -len(value) <= step < len(value):
                value = value[step]
                continue
            if isinstance(value, dict) and str(step) in value:
                value = value[str(step)]
                continue
            return default
        if isinstance(value, dict) and step in value:
            value = value[step]
        else:
            return default
    return value
