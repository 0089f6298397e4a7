"""Wire contracts between the components: the names and rules that cross Redis and HTTP.

Redis key names live in `keys`, event schemas and their encodings in `events`. Here: the
event-id rule, the field names of every stream entry, the counters the joiner and the
resolver keep, the consumer groups and the announcement kinds. Lua scripts receive these
names as an argument (`banditgate.scripts.lua_names`), never as literals, so a name changed
here changes everywhere.
"""

from __future__ import annotations

from enum import StrEnum
from functools import cached_property
from typing import Any, TypeGuard

from banditgate.errors import InvalidInput

MAX_EVENT_ID_CHARS = 256
# Rank action ids become arm names in a decision: the same bound as an event id.
MAX_ACTION_ID_CHARS = MAX_EVENT_ID_CHARS


def valid_event_id(value: Any) -> TypeGuard[str]:
    """1 to 256 printable characters (the router's event index separates ids by newlines)."""
    return isinstance(value, str) and 0 < len(value) <= MAX_EVENT_ID_CHARS and value.isprintable()


def check_event_id(value: Any, where: str, *, status: int | None = None) -> str:
    """`value` if it is a valid event id, else InvalidInput naming `where` (422 unless `status`)."""
    if not valid_event_id(value):
        raise InvalidInput(
            f"{where}: an event id is a string of 1 to {MAX_EVENT_ID_CHARS} printable characters",
            status=status,
            field=where,
        )
    return value


class WireName(StrEnum):
    """A name on the wire. Stream entries come back with bytes keys: `.raw` is the name as bytes."""

    @cached_property
    def raw(self) -> bytes:
        return self.value.encode()


class BatchField(WireName):
    """Decisions and shadow-results streams: one entry per router flush."""

    COUNT = "n"
    RECORDS = "b"  # an orjson array of the flush's records


class RewardField(WireName):
    """Rewards streams (per experiment and unrouted) and the unrouted orphans stream."""

    EVENT_ID = "id"
    VALUE = "v"  # repr of a float
    TS_MS = "ts"  # ingest time
    MOVED_FROM = "u"  # the unrouted-stream id, on a reward the resolver moved


class JoinedField(WireName):
    """Joined streams: one joined example per entry."""

    DECISION = "d"  # the decision's JSON
    REWARD = "r"
    REWARDED = "rw"  # "1": a real reward, "0": the default
    N_REWARDS = "n"
    JOINED_TS_MS = "jt"


class AuditField(WireName):
    """The join audit stream (`join:late`): rewards never trained on, and why."""

    EVENT_ID = "id"
    VALUE = "v"
    TS_MS = "ts"
    WHY = "why"


class AuditReason(WireName):
    LATE = "late"
    DUPLICATE = "duplicate"
    ORPHAN = "orphan"
    INVALID = "invalid"


class JoinCounter(WireName):
    """The joiner's counters, one hash per experiment (`keys.join_counters`).

    See `reward_ingest.join_state` for what each counts and the invariant between them.
    """

    DECISIONS_RECEIVED = "decisions_received"
    DECISIONS_DUPLICATE = "decisions_duplicate"
    DECISIONS_INVALID = "decisions_invalid"
    REWARDS_RECEIVED = "rewards_received"
    REWARDS_JOINED = "rewards_joined"
    REWARDS_DUPLICATE = "rewards_duplicate"
    REWARDS_LATE = "rewards_late"
    REWARDS_ORPHANED = "rewards_orphaned"
    REWARDS_EARLY = "rewards_early"
    REWARDS_INVALID = "rewards_invalid"
    REWARDS_REDELIVERED = "rewards_redelivered"
    JOINED = "joined"
    JOINED_REWARDED = "joined_rewarded"
    JOINED_DEFAULT = "joined_default"
    # Deferred-activation events never activated within their reward window (router/deferred.py).
    EVENTS_NEVER_ACTIVATED = "events_never_activated"


class UnroutedCounter(WireName):
    """Counters of rewards whose experiment was not known at intake (`keys.UNROUTED_COUNTERS`)."""

    REWARDS_RECEIVED = "rewards_received"
    REWARDS_RESOLVED = "rewards_resolved"
    REWARDS_ORPHANED = "rewards_orphaned"
    REWARDS_INVALID = "rewards_invalid"


# Consumer groups, by the stream they read.
JOINER_GROUP = "joiner"  # decisions and rewards streams
RESOLVER_GROUP = "resolver"  # the unrouted rewards stream
EXPORTER_GROUP = "exporter"  # joined streams
TRAINER_GROUP = "trainer"  # joined streams
TRAINER_CHANGES = "changes"  # field of the trainer's state hash: changes detected, a counter


class Announced(StrEnum):
    """What changed, in a message on `keys.ANNOUNCE_CHANNEL`."""

    SPEC = "spec"
    DELETED = "deleted"
    WEIGHTS = "weights"
    POLICY = "policy"
