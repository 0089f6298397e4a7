"""The one featurizer: request -> context features -> VW `--cb_explore_adf` example lines.

The router calls it to predict and logs the context features it produced; the
trainer turns those logged features back into the same lines to learn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from banditgate.pointers import resolve
from banditgate.spec import Arm, ContextSpec

ContextFeatures = dict[str, Any]

MAX_CATEGORICAL_CHARS = 128
MAX_TEXT_CHARS = 20_000
TEXT_PREFIX = "t."
HEADER_PREFIX = "h."

_UNSAFE = str.maketrans({" ": "_", "\t": "_", "\n": "_", "\r": "_", "|": "_", ":": "_"})

_POSITIVE = frozenset(
    "good great excellent amazing love loved loves perfect best awesome wonderful fantastic "
    "happy recommend nice enjoyed favorite beautiful brilliant superb delightful".split()
)
_NEGATIVE = frozenset(
    "bad terrible awful worst hate hated boring poor disappointing disappointed waste broke "
    "broken useless horrible refund annoying mediocre rude dull".split()
)
_NEGATIONS = frozenset(
    "not no never nothing nobody neither nor isn't wasn't don't didn't can't won't".split()
)
_INTENSIFIERS = frozenset("very really so extremely absolutely totally".split())

_PUNCTUATION = b'!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\r\n'
_TO_SPACE = bytes.maketrans(_PUNCTUATION, b" " * len(_PUNCTUATION))
_UPPER = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_LETTERS = _UPPER + _UPPER.lower()
_DIGITS = b"0123456789"
_POSITIVE_B = frozenset(w.encode() for w in _POSITIVE)
_NEGATIVE_B = frozenset(w.encode() for w in _NEGATIVE)
_NEGATIONS_B = frozenset(w.encode() for w in _NEGATIONS)
_INTENSIFIERS_B = frozenset(w.encode() for w in _INTENSIFIERS)


def text_features(text: str) -> ContextFeatures:
    """Cheap lexical signals of a review: length bucket, punctuation, sentiment words.

    Sentiment counts are of distinct words; letter case is judged on ASCII letters.
    This runs on the router's hot path, so it works on bytes with 256-entry
    translation tables and C set operations (a quarter of a regex version's cost).
    """
    raw = text[:MAX_TEXT_CHARS].encode("utf-8", "ignore")
    lowered = raw.lower()
    words = lowered.translate(_TO_SPACE).split()
    distinct = set(words)
    letters = len(raw) - len(raw.translate(None, _LETTERS))
    upper = len(raw) - len(raw.translate(None, _UPPER))
    n_words = len(words)
    positive = len(_POSITIVE_B & distinct)
    negative = len(_NEGATIVE_B & distinct)
    exclamations = raw.count(b"!")
    return {
        "t.len": "0"
        if n_words == 0
        else "5"
        if n_words <= 5
        else "15"
        if n_words <= 15
        else "40"
        if n_words <= 40
        else "100"
        if n_words <= 100
        else "100+",
        "t.excl": "0" if exclamations == 0 else "1" if exclamations == 1 else "1+",
        "t.question": b"?" in raw,
        "t.caps": letters > 0 and upper / letters > 0.3,
        "t.negation": not _NEGATIONS_B.isdisjoint(distinct) or b"n't" in lowered,
        "t.intense": not _INTENSIFIERS_B.isdisjoint(distinct),
        "t.pos": "0" if positive == 0 else "1" if positive == 1 else "1+",
        "t.neg": "0" if negative == 0 else "1" if negative == 1 else "1+",
        "t.digits": len(raw.translate(None, _DIGITS)) != len(raw),
    }


def _scalar(value: Any) -> Any:
    """A feature value VW can take, or None to skip it."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        return value if len(value) <= MAX_CATEGORICAL_CHARS else None
    if isinstance(value, list):
        items = [v for v in value if isinstance(v, str) and len(v) <= MAX_CATEGORICAL_CHARS]
        return items or None
    return None


def flatten(prefix: str, value: Any, out: ContextFeatures, depth: int = 0) -> None:
    if isinstance(value, dict) and depth < 4:
        for key, inner in value.items():
            flatten(f"{prefix}.{key}" if prefix else str(key), inner, out, depth + 1)
        return
    scalar = _scalar(value)
    if scalar is not None and prefix:
        out[prefix] = scalar


class Featurizer:
    """Extracts context features from a request as the spec's `context` section says."""

    def __init__(self, spec: ContextSpec) -> None:
        self.body_pointers = list(spec.body)
        self.headers = list(spec.headers)
        self.text_pointer = spec.text

    @property
    def reads_body(self) -> bool:
        return bool(self.body_pointers or self.text_pointer)

    def from_request(self, body: Any, headers: Mapping[str, str]) -> ContextFeatures:
        features: ContextFeatures = {}
        if body is not None:
            for pointer in self.body_pointers:
                value = _scalar(resolve(body, pointer))
                if value is not None:
                    features[pointer] = value
            if self.text_pointer is not None:
                text = resolve(body, self.text_pointer)
                if isinstance(text, str):
                    features.update(text_features(text))
        for name in self.headers:
            value = headers.get(name)
            if value is not None and len(value) <= MAX_CATEGORICAL_CHARS:
                features[HEADER_PREFIX + name] = value
        return features

    def from_rank(self, context: Mapping[str, Any]) -> ContextFeatures:
        """Caller-supplied context: flattened as given, the text pointer turned into text features."""
        features: ContextFeatures = {}
        text = resolve(context, self.text_pointer) if self.text_pointer else None
        for key, value in context.items():
            if self.text_pointer == key and isinstance(text, str):
                continue
            flatten(str(key), value, features)
        if isinstance(text, str):
            features.pop(self.text_pointer or "", None)
            features.update(text_features(text))
        return features


def _name(raw: str) -> str:
    return raw.translate(_UNSAFE)


def _normalise(items: Mapping[str, Any]) -> dict[str, Any]:
    """VW feature dict in the naming VW's JSON parser uses: string -> key+value, True -> key."""
    out: dict[str, Any] = {}
    for key, value in items.items():
        name = _name(key)
        if value is True:
            out[name] = True
        elif value is False or value is None:
            continue
        elif isinstance(value, int | float):
            out[name] = value
        elif isinstance(value, list):
            for item in value:
                out[name + _name(str(item))] = True
        else:
            out[name + _name(str(value))] = True
    return out


def namespaces(context: ContextFeatures) -> dict[str, dict[str, Any]]:
    """Shared features by namespace: `t` for text features, `c` for the rest."""
    plain = {k: v for k, v in context.items() if not k.startswith(TEXT_PREFIX)}
    text = {k[len(TEXT_PREFIX) :]: v for k, v in context.items() if k.startswith(TEXT_PREFIX)}
    return {"c": _normalise(plain), "t": _normalise(text)}


def action_namespace(name: str, features: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return _normalise({"arm": name, **(features or {})})


def _text(features: Mapping[str, Any]) -> str:
    return " ".join(
        name if value is True else f"{name}:{value:g}" for name, value in features.items()
    )


def shared_line(context: ContextFeatures) -> str:
    spaces = namespaces(context)
    return f"shared |c {_text(spaces['c'])} |t {_text(spaces['t'])}"


def action_line(name: str, features: Mapping[str, Any] | None = None) -> str:
    return f"|a {_text(action_namespace(name, features))}"


def arm_action_lines(arms: Sequence[Arm]) -> list[str]:
    return [action_line(arm.name, arm.features) for arm in arms]


def action_lines(
    names: Sequence[str], features: Sequence[Mapping[str, Any] | None] | None = None
) -> list[str]:
    if features is None:
        return [action_line(name) for name in names]
    return [action_line(name, feats) for name, feats in zip(names, features, strict=True)]


def example_lines(
    context: ContextFeatures,
    actions: Sequence[str],
    label: tuple[int, float, float] | None = None,
) -> list[str]:
    """The multi-line example; `label` = (action index, cost, logged probability)."""
    lines = [shared_line(context)]
    if label is None:
        lines.extend(actions)
        return lines
    index, cost, probability = label
    for position, line in enumerate(actions):
        if position == index:
            lines.append(f"0:{cost:g}:{probability:g} {line}")
        else:
            lines.append(line)
    return lines
