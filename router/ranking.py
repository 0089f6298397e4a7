"""Rank requests, read strictly, and the decisions they ask for (no I/O, no clock).

Our own rank route and the Personalizer-compatible routes share this: a context given as
an object or a list of objects (merged in order), action features as an object or a list
of objects, excluded actions (never chosen, probability 0, logged as such), the client's
event id, and a refusal naming every top-level key it does not know. Excluded actions are
taken out before the policy sees the set, so the pmf over the others is the policy's own;
the logged pmf keeps every requested action, in request order, with 0 for the excluded.

A multi-slot rank fills the slots in order; each slot chooses among the actions no earlier
slot took and the slot does not exclude, with the slot's id and features added to the
context, and is one decision of its own (event id `{eventId}/{slotId}`) with its own pmf.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from banditgate.contracts import MAX_ACTION_ID_CHARS, check_event_id
from banditgate.errors import BadRequest, InvalidInput
from banditgate.events import Decision
from banditgate.featurize import ContextFeatures, action_line, flatten
from banditgate.policy import ActionSet, sample_index
from router.allocation import allocate
from router.runtime import ExperimentState

MAX_RANK_ACTIONS = 1000
# Personalizer's documented bounds: a request over them is refused as the service refused it.
PERSONALIZER_MAX_ACTIONS = 50
MAX_SLOTS = 50
MAX_FEATURE_OBJECTS = 50
SLOT_PREFIX = "slot."

# Our own rank route's top-level keys; either spelling of a two-word key is accepted.
RANK_KEYS = frozenset(
    {
        "context",
        "contextFeatures",
        "actions",
        "event_id",
        "eventId",
        "excluded_actions",
        "excludedActions",
        "defer_activation",
        "deferActivation",
    }
)
PERSONALIZER_RANK_KEYS = frozenset(
    {"contextFeatures", "actions", "excludedActions", "eventId", "deferActivation"}
)
PERSONALIZER_MULTISLOT_KEYS = frozenset(
    {"contextFeatures", "actions", "slots", "eventId", "deferActivation"}
)
SLOT_KEYS = frozenset({"id", "baseAction", "features", "excludedActions"})
ACTION_KEYS = frozenset({"id", "features"})
# Callers send the same actions again and again: their VW lines are cached by content.
LINE_CACHE_SIZE = 16384
_lines: dict[Any, str] = {}


def cached_action_line(name: str, features: dict[str, Any]) -> str:
    try:
        key: Any = (name, tuple(features.items()))
        line = _lines.get(key)
    except TypeError:  # a nested or list value: not hashable, built each time
        return action_line(name, features)
    if line is None:
        if len(_lines) >= LINE_CACHE_SIZE:
            _lines.clear()
        line = _lines[key] = action_line(name, features)
    return line


@dataclass(frozen=True)
class Slot:
    id: str
    base_action: str
    features: dict[str, Any]
    excluded: frozenset[str]


@dataclass(frozen=True)
class RankRequest:
    context: dict[str, Any]
    actions: ActionSet | None
    excluded: tuple[str, ...]
    event_id: str | None
    defer: bool
    slots: tuple[Slot, ...] = ()


@dataclass(frozen=True)
class Ranked:
    """One decision over `actions`: its pmf (0 for the excluded) and the sampled index."""

    event_id: str
    actions: ActionSet
    pmf: list[float]
    index: int
    version: int
    context: ContextFeatures
    excluded: tuple[str, ...]

    @property
    def chosen(self) -> str:
        return self.actions.names[self.index]

    def ranking(self) -> list[tuple[str, float]]:
        """Chosen first, then by probability; excluded actions last (probability 0)."""
        names = self.actions.names
        excluded = set(self.excluded)
        order = sorted(
            range(len(names)),
            key=lambda i: (i != self.index, names[i] in excluded, -self.pmf[i]),
        )
        return [(names[i], self.pmf[i]) for i in order]


def unknown_keys(payload: Mapping[str, Any], known: frozenset[str]) -> list[str]:
    return sorted(str(key) for key in payload if key not in known)


def merge_objects(raw: Any, where: str) -> dict[str, Any]:
    """An object, or a list of objects merged in order (a later key wins)."""
    if raw is None:
        return {}
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, list):
        if len(raw) > MAX_FEATURE_OBJECTS:
            raise InvalidInput(f"{where}: at most {MAX_FEATURE_OBJECTS} objects", field=where)
        merged: dict[str, Any] = {}
        for index, item in enumerate(raw):
            if not isinstance(item, dict):
                raise InvalidInput(
                    f"{where}[{index}]: an object of features", field=f"{where}[{index}]"
                )
            merged.update(item)
        return merged
    raise InvalidInput(f"{where}: an object or a list of objects", field=where)


def _first(payload: Mapping[str, Any], *names: str) -> tuple[str, Any]:
    given = [name for name in names if name in payload]
    if len(given) > 1:
        raise InvalidInput(f"give one of {' or '.join(given)}, not both", field=given[1])
    return (given[0], payload[given[0]]) if given else (names[0], None)


def _action_id(raw: Any, where: str) -> str:
    if not isinstance(raw, str | int) or isinstance(raw, bool):
        raise InvalidInput(f"{where}: a string or integer", field=where)
    name = str(raw)
    if not name or len(name) > MAX_ACTION_ID_CHARS:
        raise InvalidInput(f"{where}: 1 to {MAX_ACTION_ID_CHARS} characters", field=where)
    return name


def parse_actions(
    raw: Any, *, required: bool = False, limit: int = MAX_RANK_ACTIONS
) -> ActionSet | None:
    if raw is None and not required:
        return None
    if not isinstance(raw, list) or not raw:
        raise InvalidInput("actions: a non-empty list", field="actions")
    if len(raw) > limit:
        raise InvalidInput(f"actions: at most {limit}, not {len(raw)}", field="actions")
    names: list[str] = []
    seen: set[str] = set()
    features: list[dict[str, Any]] = []
    for index, item in enumerate(raw):
        where = f"actions[{index}]"
        if not isinstance(item, dict) or "id" not in item:
            raise InvalidInput(f"{where}: an object with an id", field=where)
        if not item.keys() <= ACTION_KEYS:
            extra = unknown_keys(item, ACTION_KEYS)
            raise BadRequest(f"{where}: unknown keys {extra}", field=f"{where}.{extra[0]}")
        name = _action_id(item["id"], f"{where}.id")
        if name in seen:
            raise InvalidInput(f"{where}.id: duplicate id {name!r}", field=f"{where}.id")
        seen.add(name)
        names.append(name)
        features.append(merge_objects(item.get("features"), f"{where}.features"))
    lines = tuple(cached_action_line(n, f) for n, f in zip(names, features, strict=True))
    return ActionSet(tuple(names), lines, tuple(features))


def parse_excluded(raw: Any, names: Sequence[str], where: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidInput(f"{where}: a list of action ids", field=where)
    known = set(names)
    out: list[str] = []
    for index, item in enumerate(raw):
        name = _action_id(item, f"{where}[{index}]")
        if name not in known:
            raise InvalidInput(
                f"{where}[{index}]: {name!r} is not one of the request's actions",
                field=f"{where}[{index}]",
            )
        if name not in out:
            out.append(name)
    if len(out) >= len(names):
        raise InvalidInput(f"{where}: every action is excluded", field=where)
    return tuple(out)


def _flag(raw: Any, where: str) -> bool:
    if raw is None:
        return False
    if not isinstance(raw, bool):
        raise InvalidInput(f"{where}: true or false", field=where)
    return raw


def _event_id(raw: Any, where: str) -> str | None:
    return None if raw is None else check_event_id(raw, where, status=400)


def parse_rank(payload: Any, default_actions: ActionSet) -> RankRequest:
    """Our own rank route's body (snake_case or Personalizer's camelCase keys)."""
    if not isinstance(payload, dict):
        raise InvalidInput("the rank request is a JSON object", field="body")
    extra = unknown_keys(payload, RANK_KEYS)
    if extra:
        raise BadRequest(
            f"unknown keys {extra}; a rank request has {sorted(RANK_KEYS)}", field=extra[0]
        )
    context_key, context = _first(payload, "context", "contextFeatures")
    actions = parse_actions(payload.get("actions"))
    excluded_key, excluded = _first(payload, "excluded_actions", "excludedActions")
    id_key, event_id = _first(payload, "event_id", "eventId")
    defer_key, defer = _first(payload, "defer_activation", "deferActivation")
    names = (actions or default_actions).names
    return RankRequest(
        context=merge_objects(context, context_key),
        actions=actions,
        excluded=parse_excluded(excluded, names, excluded_key),
        event_id=_event_id(event_id, id_key),
        defer=_flag(defer, defer_key),
    )


def parse_personalizer_rank(payload: Any) -> RankRequest:
    """Personalizer's RankRequest: actions are required and come with the request."""
    if not isinstance(payload, dict):
        raise InvalidInput("the rank request is a JSON object", field="body")
    extra = unknown_keys(payload, PERSONALIZER_RANK_KEYS)
    if extra:
        raise BadRequest(f"unknown keys {extra}", field=extra[0])
    actions = parse_actions(payload.get("actions"), required=True, limit=PERSONALIZER_MAX_ACTIONS)
    assert actions is not None
    return RankRequest(
        context=merge_objects(payload.get("contextFeatures"), "contextFeatures"),
        actions=actions,
        excluded=parse_excluded(payload.get("excludedActions"), actions.names, "excludedActions"),
        event_id=_event_id(payload.get("eventId"), "eventId"),
        defer=_flag(payload.get("deferActivation"), "deferActivation"),
    )


def parse_multislot_rank(payload: Any) -> RankRequest:
    if not isinstance(payload, dict):
        raise InvalidInput("the rank request is a JSON object", field="body")
    extra = unknown_keys(payload, PERSONALIZER_MULTISLOT_KEYS)
    if extra:
        raise BadRequest(f"unknown keys {extra}", field=extra[0])
    actions = parse_actions(payload.get("actions"), required=True, limit=PERSONALIZER_MAX_ACTIONS)
    assert actions is not None
    raw_slots = payload.get("slots")
    if not isinstance(raw_slots, list) or not raw_slots:
        raise InvalidInput("slots: a non-empty list", field="slots")
    if len(raw_slots) > MAX_SLOTS:
        raise InvalidInput(f"slots: at most {MAX_SLOTS}", field="slots")
    if len(raw_slots) > len(actions.names):
        raise InvalidInput(
            f"slots: {len(raw_slots)} slots but only {len(actions.names)} actions", field="slots"
        )
    known = set(actions.names)
    slots: list[Slot] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_slots):
        where = f"slots[{index}]"
        if not isinstance(raw, dict):
            raise InvalidInput(f"{where}: an object", field=where)
        extra = unknown_keys(raw, SLOT_KEYS)
        if extra:
            raise BadRequest(f"{where}: unknown keys {extra}", field=f"{where}.{extra[0]}")
        slot_id = check_event_id(raw.get("id"), f"{where}.id", status=400)
        if slot_id in seen:
            raise InvalidInput(f"{where}.id: duplicate slot id {slot_id!r}", field=f"{where}.id")
        seen.add(slot_id)
        if raw.get("baseAction") is None:
            raise InvalidInput(f"{where}.baseAction: required", field=f"{where}.baseAction")
        base = _action_id(raw["baseAction"], f"{where}.baseAction")
        if base not in known:
            raise InvalidInput(
                f"{where}.baseAction: {base!r} is not one of the request's actions",
                field=f"{where}.baseAction",
            )
        excluded = parse_excluded(
            raw.get("excludedActions"), actions.names, f"{where}.excludedActions"
        )
        if base in excluded:
            raise InvalidInput(
                f"{where}.baseAction: {base!r} is also excluded", field=f"{where}.baseAction"
            )
        slots.append(
            Slot(
                slot_id,
                base,
                merge_objects(raw.get("features"), f"{where}.features"),
                frozenset(excluded),
            )
        )
    return RankRequest(
        context=merge_objects(payload.get("contextFeatures"), "contextFeatures"),
        actions=actions,
        excluded=(),
        event_id=_event_id(payload.get("eventId"), "eventId"),
        defer=_flag(payload.get("deferActivation"), "deferActivation"),
        slots=tuple(slots),
    )


def _subset(actions: ActionSet, keep: list[int]) -> ActionSet:
    features = actions.features
    return ActionSet(
        tuple(actions.names[i] for i in keep),
        tuple(actions.lines[i] for i in keep),
        tuple(features[i] for i in keep) if features is not None else None,
    )


def decide(
    state: ExperimentState,
    context: ContextFeatures,
    event_id: str,
    actions: ActionSet,
    excluded: Sequence[str] = (),
    body: Any = None,
) -> Ranked:
    """The policy's pmf over the actions not excluded, sampled with the event id as seed."""
    if excluded:
        gone = set(excluded)
        keep = [i for i, name in enumerate(actions.names) if name not in gone]
        allocation = allocate(state, context, _subset(actions, keep), {}, body)
        pmf = [0.0] * len(actions.names)
        for position, index in enumerate(keep):
            pmf[index] = allocation.pmf[position]
    else:
        allocation = allocate(state, context, actions, {}, body)
        pmf = allocation.pmf
    if allocation.seed_key is not None:
        index = sample_index(pmf, allocation.seed_key, 0)
    else:
        index = sample_index(pmf, event_id, allocation.version)
    return Ranked(event_id, actions, pmf, index, allocation.version, context, tuple(excluded))


def slot_event_id(event_id: str, slot_id: str) -> str:
    return f"{event_id}/{slot_id}"


def slot_context(context: ContextFeatures, slot: Slot) -> ContextFeatures:
    out = dict(context)
    out[SLOT_PREFIX + "id"] = slot.id
    flatten(SLOT_PREFIX.rstrip("."), slot.features, out)
    return out


def decide_slots(
    state: ExperimentState,
    context: ContextFeatures,
    event_id: str,
    actions: ActionSet,
    slots: Sequence[Slot],
) -> list[Ranked]:
    """One decision per slot, in order; no action is used twice. Raises before any is made."""
    taken: set[str] = set()
    out: list[Ranked] = []
    for index, slot in enumerate(slots):
        excluded = [n for n in actions.names if n in taken or n in slot.excluded]
        if len(excluded) >= len(actions.names):
            raise InvalidInput(
                f"slots[{index}]: no action is left for slot {slot.id!r}",
                field=f"slots[{index}].excludedActions",
            )
        ranked = decide(
            state,
            slot_context(context, slot),
            slot_event_id(event_id, slot.id),
            actions,
            excluded,
        )
        taken.add(ranked.chosen)
        out.append(ranked)
    return out


def ranked_decision(
    state: ExperimentState, ranked: Ranked, ts_ms: int, *, latency_ms: float = 0.0
) -> Decision:
    decision: Decision = {
        "event_id": ranked.event_id,
        "experiment": state.name,
        "ts_ms": ts_ms,
        "policy_version": ranked.version,
        "mode": state.spec.mode,
        "context": ranked.context,
        "arms": list(ranked.actions.names),
        "pmf": ranked.pmf,
        "chosen": ranked.chosen,
        "forced": False,
        "status": 200,
        "latency_ms": latency_ms,
    }
    if ranked.actions.features is not None:
        decision["action_features"] = list(ranked.actions.features)
    if ranked.excluded:
        decision["excluded"] = list(ranked.excluded)
    return decision
