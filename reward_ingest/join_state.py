"""The join state of one experiment, changed only by one Lua script (atomic, cluster-safe).

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
waiting in its backlog. Likewise, held rewards become orphans only once the decisions stream
has been read past their backward window.

A reward counts when its ingest time `ts` is before the decision's window end; otherwise it
is late. Under `earliest` the first reward is final: the example is emitted at once and later
rewards are duplicates (counted and audited, never trained on).

Counters (hash `join:counters`):
    decisions_received   distinct decisions applied
    decisions_duplicate  a decision logged again under an event id already pending or closed
    decisions_invalid    a logged decision without a usable event_id or ts_ms
    rewards_received     rewards applied by the joiner (routed or resolved, valid)
    rewards_joined       rewards that went into a joined example
    rewards_duplicate    rewards after the final one under `earliest`
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
from banditgate.redis import Redis
from banditgate.spec import RewardSpec

COUNTERS = (
    "decisions_received",
    "decisions_duplicate",
    "decisions_invalid",
    "rewards_received",
    "rewards_joined",
    "rewards_duplicate",
    "rewards_late",
    "rewards_orphaned",
    "rewards_early",
    "rewards_invalid",
    "rewards_redelivered",
    "joined",
    "joined_rewarded",
    "joined_default",
)

MAX_EVENT_ID_CHARS = 256

_SCRIPT = r"""
local DS, RS, P, D, R, E = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local ED, C, A, K, J, M = KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local group = ARGV[1]
local now_s = ARGV[2]
local now = tonumber(now_s)
local agg = ARGV[3]
local default = ARGV[4]
local backward = tonumber(ARGV[5])
local retention = tonumber(ARGV[6])
local limit = tonumber(ARGV[7])
local close_until = tonumber(ARGV[8])
local expire_until = tonumber(ARGV[9])
local jmax = ARGV[10]
local amax = ARGV[11]
local moved_retention = tonumber(ARGV[12])
local skew = tonumber(ARGV[13])
local CHUNK = 1000

local count = {}
local function inc(name, n)
  count[name] = (count[name] or 0) + (n or 1)
end

local function fmt(x)
  return string.format('%.17g', x)
end

local function emit(d, r, rewarded, n)
  redis.call('XADD', J, 'MAXLEN', '~', jmax, '*',
    'd', d, 'r', r, 'rw', rewarded, 'n', n, 'jt', now_s)
  inc('joined')
  if rewarded == '1' then inc('joined_rewarded') else inc('joined_default') end
end

local function audit(id, v, ts, why)
  redis.call('XADD', A, 'MAXLEN', '~', amax, '*', 'id', id, 'v', v, 'ts', ts, 'why', why)
end

local function fold(state, v)
  if not state then
    return '1|' .. v .. '|' .. v .. '|' .. v
  end
  local n, s, lo, hi = string.match(state, '^(%d+)|([^|]+)|([^|]+)|([^|]+)$')
  local x = tonumber(v)
  return string.format('%d|%s|%s|%s', tonumber(n) + 1, fmt(tonumber(s) + x),
    fmt(math.min(tonumber(lo), x)), fmt(math.max(tonumber(hi), x)))
end

local function final(state)
  local n, s, lo, hi = string.match(state, '^(%d+)|([^|]+)|([^|]+)|([^|]+)$')
  if agg == 'sum' then return s, n end
  if agg == 'mean' then return fmt(tonumber(s) / tonumber(n)), n end
  if agg == 'max' then return hi, n end
  return lo, n
end

local function idms(id)
  return tonumber(string.match(id, '^(%d+)'))
end

-- Multi-key commands in slices (Lua's unpack has a stack limit).
local function each_slice(list, size, fn)
  local i = 1
  while i <= #list do
    local j = math.min(i + size - 1, #list)
    fn(i, j)
    i = j + 1
  end
end

local function lookup(command, key, ids)
  local out = {}
  each_slice(ids, CHUNK, function(i, j)
    local values = redis.call(command, key, unpack(ids, i, j))
    for n = i, j do out[ids[n]] = values[n - i + 1] end
  end)
  return out
end

local function write(command, key, args, width)
  each_slice(args, CHUNK * width, function(i, j)
    redis.call(command, key, unpack(args, i, j))
  end)
end

local function add_pair(list, a, b)
  list[#list + 1] = a
  list[#list + 1] = b
end

local has_early = redis.call('HLEN', E) > 0

-- Decisions first: a reward read in the same batch as its decision joins directly.
-- ARGV[14]: msgpack array of (message id, k, invalid, k x (event id, decision, window end)).
local ids, docs, dues = {}, {}, {}
local batch = cmsgpack.unpack(ARGV[14])
local i = 1
while i <= #batch do
  local msgid, k, bad = batch[i], tonumber(batch[i + 1]), tonumber(batch[i + 2])
  i = i + 3
  if redis.call('XACK', DS, group, msgid) == 1 then
    if bad > 0 then inc('decisions_invalid', bad) end
    for _ = 1, k do
      ids[#ids + 1], docs[#docs + 1], dues[#dues + 1] = batch[i], batch[i + 1], batch[i + 2]
      i = i + 3
    end
  else
    i = i + 3 * k
  end
end
if #ids > 0 then
  local pending = lookup('HMGET', P, ids)
  local closed = lookup('ZMSCORE', C, ids)
  local early = {}
  if has_early then early = lookup('HMGET', E, ids) end
  local seen = {}
  local new_p, new_d, new_r, new_c, merged = {}, {}, {}, {}, {}
  for n = 1, #ids do
    local id, d, due_s = ids[n], docs[n], dues[n]
    if pending[id] or closed[id] or seen[id] then
      inc('decisions_duplicate')
    else
      seen[id] = true
      inc('decisions_received')
      local due = tonumber(due_s)
      local state, done = false, false
      local held = early[id]
      if held then
        merged[#merged + 1] = id
        for v, ts in string.gmatch(held, '([^,;]+),([^;]+);') do
          if tonumber(ts) >= due then
            inc('rewards_late')
            audit(id, v, ts, 'late')
          elseif agg == 'earliest' then
            if done then
              inc('rewards_duplicate')
              audit(id, v, ts, 'duplicate')
            else
              emit(d, v, '1', '1')
              inc('rewards_joined')
              add_pair(new_c, due + 0.5, id)
              done = true
            end
          else
            state = fold(state, v)
            inc('rewards_joined')
          end
        end
      end
      if not done then
        add_pair(new_p, id, d)
        add_pair(new_d, due_s, id)
        if state then add_pair(new_r, id, state) end
      end
    end
  end
  write('HDEL', E, merged, 1)
  write('ZREM', ED, merged, 1)
  write('HSET', P, new_p, 2)
  write('ZADD', D, new_d, 2)
  write('HSET', R, new_r, 2)
  write('ZADD', C, new_c, 2)
end

-- Rewards: each one only if this call acknowledges it (once, whoever delivered it).
-- ARGV[15]: msgpack array of (message id, event id, value, ts, moved-from id, valid).
local rewards = {}
batch = cmsgpack.unpack(ARGV[15])
i = 1
while i <= #batch do
  local msgid, id, v = batch[i], batch[i + 1], batch[i + 2]
  local ts, mv, ok = batch[i + 3], batch[i + 4], batch[i + 5]
  i = i + 6
  if redis.call('XACK', RS, group, msgid) == 1 then
    if mv ~= '' and redis.call('ZADD', M, 'NX', now, mv) == 0 then
      inc('rewards_redelivered')
    elseif ok ~= '1' then
      inc('rewards_invalid')
      audit(id, v, ts, 'invalid')
    else
      inc('rewards_received')
      rewards[#rewards + 1] = {id, v, ts}
    end
  end
end
if #rewards > 0 then
  local unique, known = {}, {}
  for _, reward in ipairs(rewards) do
    if not known[reward[1]] then
      known[reward[1]] = true
      unique[#unique + 1] = reward[1]
    end
  end
  local pending = lookup('HMGET', P, unique)
  local deadline = lookup('ZMSCORE', D, unique)
  local closed = lookup('ZMSCORE', C, unique)
  local states = {}
  if agg ~= 'earliest' then states = lookup('HMGET', R, unique) end
  local early = {}
  if has_early then early = lookup('HMGET', E, unique) end
  local done_p, new_c, new_ed = {}, {}, {}
  local changed_r, changed_e = {}, {}
  for _, reward in ipairs(rewards) do
    local id, v, ts = reward[1], reward[2], reward[3]
    local t = tonumber(ts)
    local d = pending[id]
    if d then
      local due = tonumber(deadline[id])
      if t >= due then
        inc('rewards_late')
        audit(id, v, ts, 'late')
      elseif agg == 'earliest' then
        emit(d, v, '1', '1')
        inc('rewards_joined')
        pending[id] = false
        closed[id] = due + 0.5
        done_p[#done_p + 1] = id
        add_pair(new_c, due + 0.5, id)
      else
        states[id] = fold(states[id], v)
        changed_r[id] = true
        inc('rewards_joined')
      end
    elseif closed[id] then
      local score = tonumber(closed[id])
      if agg == 'earliest' and score % 1 ~= 0 and t < score then
        inc('rewards_duplicate')
        audit(id, v, ts, 'duplicate')
      else
        inc('rewards_late')
        audit(id, v, ts, 'late')
      end
    else
      local held = early[id]
      if not held then
        add_pair(new_ed, now + backward, id)
        held = ''
      end
      early[id] = held .. v .. ',' .. ts .. ';'
      changed_e[id] = true
      inc('rewards_early')
    end
  end
  local new_r, new_e = {}, {}
  for id in pairs(changed_r) do add_pair(new_r, id, states[id]) end
  for id in pairs(changed_e) do add_pair(new_e, id, early[id]) end
  write('HDEL', P, done_p, 1)
  write('HDEL', R, done_p, 1) -- state left by an aggregation the spec no longer has
  write('ZREM', D, done_p, 1)
  write('ZADD', C, new_c, 2)
  write('HSET', R, new_r, 2)
  write('HSET', E, new_e, 2)
  write('ZADD', ED, new_ed, 2)
end

-- Close due windows, but not ahead of rewards another consumer still holds.
local pending_rewards = redis.call('XPENDING', RS, group)
if pending_rewards[1] > 0 then
  close_until = math.min(close_until, idms(pending_rewards[2]) - 1 - skew)
end
local due_ids = redis.call('ZRANGEBYSCORE', D, '-inf', close_until, 'WITHSCORES', 'LIMIT', 0, limit)
local closing, new_c = {}, {}
for j = 1, #due_ids, 2 do
  closing[#closing + 1] = due_ids[j]
  add_pair(new_c, due_ids[j + 1], due_ids[j])
end
if #closing > 0 then
  local docs_due = lookup('HMGET', P, closing)
  local states = lookup('HMGET', R, closing)
  for _, id in ipairs(closing) do
    local d = docs_due[id]
    if d then
      local state = states[id]
      if state then
        local r, n = final(state)
        emit(d, r, '1', n)
      else
        emit(d, default, '0', '0')
      end
    end
  end
  write('ZADD', C, new_c, 2)
  write('HDEL', P, closing, 1)
  write('HDEL', R, closing, 1)
  write('ZREM', D, closing, 1)
end

-- Held rewards become orphans once the decisions stream has been read past their deadline.
local pending_decisions = redis.call('XPENDING', DS, group)
if pending_decisions[1] > 0 then
  expire_until = math.min(expire_until, idms(pending_decisions[2]) - 1 - skew)
end
local expired = redis.call('ZRANGEBYSCORE', ED, '-inf', expire_until, 'LIMIT', 0, limit)
if #expired > 0 then
  local held = lookup('HMGET', E, expired)
  for _, id in ipairs(expired) do
    if held[id] then
      for v, ts in string.gmatch(held[id], '([^,;]+),([^;]+);') do
        inc('rewards_orphaned')
        audit(id, v, ts, 'orphan')
      end
    end
  end
  write('HDEL', E, expired, 1)
  write('ZREM', ED, expired, 1)
end

-- Forget closed ids (and moved markers) after their retention, a bounded slice per call.
local old = redis.call('ZCOUNT', C, '-inf', now - retention)
if old > 0 then redis.call('ZREMRANGEBYRANK', C, 0, math.min(old, limit) - 1) end
old = redis.call('ZCOUNT', M, '-inf', now - moved_retention)
if old > 0 then redis.call('ZREMRANGEBYRANK', M, 0, math.min(old, limit) - 1) end

for name, n in pairs(count) do
  redis.call('HINCRBY', K, name, n)
end

local next_due = -1
local first = redis.call('ZRANGE', D, 0, 0, 'WITHSCORES')
if #first > 0 then next_due = tonumber(first[2]) end
first = redis.call('ZRANGE', ED, 0, 0, 'WITHSCORES')
if #first > 0 and (next_due < 0 or tonumber(first[2]) < next_due) then
  next_due = tonumber(first[2])
end
return {#closing, #expired, fmt(next_due)}
"""


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
        batch = orjson.loads((fields or {})[b"b"])
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
        if (
            not isinstance(event_id, str)
            or not 0 < len(event_id) <= MAX_EVENT_ID_CHARS
            or not isinstance(ts_ms, int)
            or isinstance(ts_ms, bool)
        ):
            entry.invalid += 1
            continue
        entry.decisions.append((event_id, orjson.dumps(decision), ts_ms + window_ms))
    return entry


def decode_reward_entry(
    message_id: bytes, fields: dict[bytes, bytes] | None, spec: RewardSpec
) -> RewardEntry:
    fields = fields or {}
    try:
        event_id = fields[b"id"].decode()
        value = float(fields[b"v"])
        ts_ms = int(fields[b"ts"])
    except (KeyError, ValueError, UnicodeDecodeError):
        raw = fields.get(b"v", b"")
        return RewardEntry(
            message_id,
            fields.get(b"id", b"").decode(errors="replace"),
            raw.decode(errors="replace") or "?",
            0,
            valid=False,
        )
    moved = fields.get(b"u", b"").decode()
    valid = (
        math.isfinite(value)
        and spec.min <= value <= spec.max
        and 0 < len(event_id) <= MAX_EVENT_ID_CHARS
    )
    return RewardEntry(message_id, event_id, repr(value), ts_ms, moved, valid)


class JoinScript:
    """Calls the script for one experiment."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._script = redis.register_script(_SCRIPT)

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
            )
        args.append(msgpack_strings(flat))
        return PreparedStep(experiment, args)

    async def run(self, step: PreparedStep) -> StepResult:
        closed, expired, next_due = await self._script(
            keys=script_keys(step.experiment), args=step.args
        )
        due = float(next_due)
        return StepResult(int(closed), int(expired), None if due < 0 else due)


def msgpack_strings(items: Sequence[bytes]) -> bytes:
    """A MessagePack array of strings, for the script's `cmsgpack.unpack`.

    One argument per batch instead of several per message: encoding hundreds of thousands
    of separate command arguments was most of the joiner's own CPU time.
    """
    parts = [b"\xdd" + len(items).to_bytes(4, "big")]
    for item in items:
        size = len(item)
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


_FIXSTR = [bytes((0xA0 | size,)) for size in range(32)]


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
    ]
