"""YAML from clients, with limits: nesting depth, aliases, and what an alias may expand to.

`yaml.safe_load` builds no objects, but it still follows every alias (a few hundred bytes
of "billion laughs" expand to gigabytes once serialised) and recurses without bound (a
deep document ends in RecursionError). `load` refuses both with `YAMLLimit`, which says
which limit was hit.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import Node

MAX_DEPTH = 64
MAX_ALIASES = 64
MAX_NODES = 100_000  # counting what each alias stands for


class YAMLLimit(yaml.YAMLError):
    """A document over one of the limits; the message names it."""


class _LimitedLoader(yaml.SafeLoader):
    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0
        self._nodes = 0
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise YAMLLimit(f"more than {MAX_ALIASES} aliases (*name)")
            anchor = self.peek_event().anchor
            if anchor in self.anchors:
                self._count(self._size(self.anchors[anchor]))
        else:
            self._count(1)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise YAMLLimit(f"nested deeper than {MAX_DEPTH} levels")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def _count(self, nodes: int) -> None:
        self._nodes += nodes
        if self._nodes > MAX_NODES:
            raise YAMLLimit(f"more than {MAX_NODES} values once aliases are expanded")

    def _size(self, node: Node) -> int:
        known = self._sizes.get(id(node))
        if known is not None:
            return known
        size = 1
        value = node.value
        if isinstance(value, list):
            for item in value:
                if isinstance(item, tuple):  # a mapping's (key, value)
                    size += sum(self._size(part) for part in item)
                elif isinstance(item, Node):
                    size += self._size(item)
        self._sizes[id(node)] = size
        return size


def load(text: bytes | str) -> Any:
    """One YAML document, like `yaml.safe_load`, within the limits."""
    loader = _LimitedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
