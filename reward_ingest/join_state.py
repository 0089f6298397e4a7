"""The join state of one experiment, changed only by one Lua script (atomic, cluster-safe).

The script is `join_state.lua`; the field, counter and reason names it writes come from
`banditgate.contracts` as its last argument.

Keys (all under the experiment's hash tag, so one script may touch them all):

    join:pending          hash  event id -> decision JSON, for decisions whose window is open
    join:deadlines        zset  event id -> window end (decision ts_ms + window_s)
    join:rewards          hash  event id -> "n|sum|min|max" of the rewards of a pending decision
                                (sum, mean, max, min; `earliest` joins at the first reward)
    join:early            hash  event id -> "value,ts;..." rewards that came before their decision
    join:early:deadlines  zset  event id -> when the held rewards become orphans
    join:closed           zset  event id -> window end (+0.5 when closed by its final reward);
                                pruned `join_closed_retention_s` after the window end
    join:moved            zset  unrouted-stream id -> time: a resolver's repeated move counts once
    join:reward_keys      zset  "event id|idempotency key" -> expiry: a client's retry counts once
    join:late             stream  audit of rewards never trained on: id, v, ts, why
                                (late | duplicate | orphan | invalid)
    join:counters         hash  the counters below

One call of the script takes a batch read from the decisions and rewards streams, applies
only the messages it can still acknowledge (XACK returns 1 once per message, so a batch
re-delivered after a crash, or taken over by another joiner, is applied exactly once), then
closes due windows and expires held rewards. Each joined example is XADDed to the joined
stream in the same script, so a decision is emitted exactly once.

Windows close on the joiner's clock, but never ahead of the reward stream: a window that
ended at T closes only once every reward appended before T has been applied (the batch read
reached past T and no other consumer still holds an older reward unacknowledged), with an
allowance for clock skew. So a joiner catching up after an outage still joins the rewards
waiting in its backlog. Nor ahead of the unrouted rewards: the joiner also bounds the close
by the resolver's watermark (`keys.UNROUTED_WATERMARK`, see resolver.py), so a reward
accepted before the window's end but still in the resolver's backlog is joined, not late. Likewise, held rewards become orphans only once the decisions stream
has been read past their backward window.

A reward counts when its ingest time `ts` is before the decision's window end; otherwise it
is late. Under `earliest` the first reward is final: the example is emitted at once and later
rewards are duplicates (counted and audited, never trained on).

Counters (hash `join:counters`, names in `banditgate.contracts.JoinCounter`):
    decisions_received   distinct decisions applied
    decisions_duplicate  a decision logged again under an event id already pending or closed
    decisions_invalid    a logged decision without a usable event_id or ts_ms
    rewards_received     rewards applied by the joiner (routed or resolved, valid)
    rewards_joined       rewards that went into a joined example
    rewards_duplicate    rewards after the final one under `earliest`, and retries that carry
                         an idempotency key already applied for their event id
    rewards_late         rewards for a decision whose window had closed
    rewards_orphaned     rewards whose event id matched no decision within the backward window
    rewards_early        rewards that arrived before their decision (informational)
    rewards_invalid      out-of-range rewards (rejected by the webhook, or by the joiner
                         for rewards routed late); not part of rewards_received
    rewards_redelivered  a resolver move repeated after a crash, ignored
    joined               joined examples emitted = joined_rewarded + joined_default
    joined_rewarded      with a real (aggregated) reward
    joined_default       with the experiment's default reward

rewards_received = rewards_joined + rewards_duplicate + rewards_late + rewards_orphaned
                   + rewards still held in join:early.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from banditgate import keys
from banditgate.contracts import (
    AuditField,
    AuditReason,
    BatchField,
    JoinCounter,
    JoinedField,
    RewardField,
    valid_event_id,
)
from banditgate.redis import Redis
from banditgate.scripts import lua_names, msgpack_strings, register
from banditgate.spec import RewardSpec

_NAMES = lua_names(joined=JoinedField, audit=AuditField, why=AuditReason, counter=JoinCounter)
_RECORDS = BatchField.RECORDS.raw
_ID, _VALUE, _TS = RewardField.EVENT_ID.raw, RewardField.VALUE.raw, RewardField.TS_MS.raw
_MOVED, _KEY = RewardField.MOVED_FROM.raw, RewardField.IDEMPOTENCY_KEY.raw


@dataclass
class DecisionEntry:
    """One decisions-stream entry: its id and the decisions it holds, as script arguments."""

    message_id: bytes
    decisions: list[tuple[str, bytes, int]]  # (event id, decision JSON, window end ms)
    invalid: int = 0


@dataclass
class RewardEntry:
    message_id: bytes
    event_id: str
    value: str
    ts_ms: int
    moved: str = ""  # the unrouted-stream id when the resolver moved it here
    valid: bool = True
    key: str = ""  # the client's idempotency key


@dataclass
class PreparedStep:
    experiment: str
    args: list[Any]


@dataclass
class StepResult:
    closed: int
    expired: int
    next_due_ms: float | None


def decode_decision_entry(
    message_id: bytes, fields: dict[bytes, bytes] | None, window_ms: int
) -> DecisionEntry:
    """Untrusted bytes in, script arguments out; what cannot be used is counted, never raised."""
    entry = DecisionEntry(message_id, [])
    try:
        batch = orjson.loads((fields or {})[_RECORDS])
    except (KeyError, orjson.JSONDecodeError):
        entry.invalid = 1
        return entry
    if not isinstance(batch, list):
        entry.invalid = 1
        return entry
    for decision in batch:
        if not isinstance(decision, dict):
            entry.invalid += 1
            continue
        event_id = decision.get("event_id")
        ts_ms = decision.get("ts_ms")
        if not valid_event_id(event_id) or not isinstance(ts_ms, int) or isinstance(ts_ms, bool):
            entry.invalid += 1
            continue
        entry.decisions.append((event_id, orjson.dumps(decision), ts_ms + window_ms))
    return entry


def decode_reward_entry(
    message_id: bytes, fields: dict[bytes, bytes] | None, spec: RewardSpec
) -> RewardEntry:
    fields = fields or {}
    try:
        event_id = fields[_ID].decode()
        value = float(fields[_VALUE])
        ts_ms = int(fields[_TS])
    except (KeyError, ValueError, UnicodeDecodeError):
        raw = fields.get(_VALUE, b"")
        return RewardEntry(
            message_id,
            fields.get(_ID, b"").decode(errors="replace"),
            raw.decode(errors="replace") or "?",
            0,
            valid=False,
        )
    moved = fields.get(_MOVED, b"").decode()
    key = fields.get(_KEY, b"").decode(errors="replace")
    valid = math.isfinite(value) and spec.min <= value <= spec.max and valid_event_id(event_id)
    return RewardEntry(message_id, event_id, repr(value), ts_ms, moved, valid, key)


class JoinScript:
    """Calls the script for one experiment."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._script = register(redis, "reward_ingest", "join_state.lua")

    async def step(self, experiment: str, **options: Any) -> StepResult:
        return await self.run(self.prepare(experiment, **options))

    def prepare(
        self,
        experiment: str,
        *,
        group: str,
        reward: RewardSpec,
        now_ms: int,
        close_until_ms: int,
        expire_until_ms: int,
        decisions: Sequence[DecisionEntry] = (),
        rewards: Sequence[RewardEntry] = (),
        close_limit: int = 2000,
        retention_ms: int = 3_600_000,
        skew_ms: int = 500,
        joined_maxlen: int = 2_000_000,
        audit_maxlen: int = 100_000,
    ) -> PreparedStep:
        """The script's arguments (CPU only, no I/O: it can overlap another step's script)."""
        args: list[Any] = [
            group,
            now_ms,
            reward.aggregation,
            repr(float(reward.default)),
            int(reward.backward_window_s * 1000),
            retention_ms,
            close_limit,
            close_until_ms,
            expire_until_ms,
            joined_maxlen,
            audit_maxlen,
            max(retention_ms, 3_600_000),
            skew_ms,
        ]
        flat: list[bytes] = []
        for entry in decisions:
            flat += (entry.message_id, b"%d" % len(entry.decisions), b"%d" % entry.invalid)
            for event_id, decision, due in entry.decisions:
                flat += (event_id.encode(), decision, b"%d" % due)
        args.append(msgpack_strings(flat))
        flat = []
        for item in rewards:
            flat += (
                item.message_id,
                item.event_id.encode(),
                item.value.encode(),
                b"%d" % item.ts_ms,
                item.moved.encode(),
                b"1" if item.valid else b"0",
                item.key.encode(),
            )
        args.append(msgpack_strings(flat))
        args.append(_NAMES)
        # How long an idempotency key is remembered: while a retry could still count.
        args.append(int((reward.window_s + reward.backward_window_s) * 1000) + retention_ms)
        return PreparedStep(experiment, args)

    async def run(self, step: PreparedStep) -> StepResult:
        closed, expired, next_due = await self._script(
            keys=script_keys(step.experiment), args=step.args
        )
        due = float(next_due)
        return StepResult(int(closed), int(expired), None if due < 0 else due)


def script_keys(experiment: str) -> list[str]:
    return [
        keys.decisions(experiment),
        keys.rewards(experiment),
        keys.join_pending(experiment),
        keys.join_deadlines(experiment),
        keys.join_rewards(experiment),
        keys.join_early(experiment),
        keys.join_early_deadlines(experiment),
        keys.join_closed(experiment),
        keys.join_late(experiment),
        keys.join_counters(experiment),
        keys.joined(experiment),
        keys.join_moved(experiment),
        keys.join_reward_keys(experiment),
    ]
