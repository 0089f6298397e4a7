-- The join step of one experiment: see reward_ingest/join_state.py for keys, arguments
-- and the invariants.
local DS, RS, P, D, R, E = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local ED, C, A, K, J, M = KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local KK = KEYS[13]
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
-- ARGV[16]: the wire names (banditgate.contracts), by role.
local names = cmsgpack.unpack(ARGV[16])
-- ARGV[17]: how long an idempotency key is remembered (ms).
local key_ttl = tonumber(ARGV[17])
local JF, AF, WHY, CTR = names.joined, names.audit, names.why, names.counter
local CHUNK = 1000

local count = {}
local function inc(name, n)
  count[name] = (count[name] or 0) + (n or 1)
end

local function fmt(x)
  return string.format('%.17g', x)
end

local function emit(d, r, rewarded, n)
  redis.call('XADD', J, 'MAXLEN', '~', jmax, '*', JF.decision, d, JF.reward, r,
    JF.rewarded, rewarded, JF.n_rewards, n, JF.joined_ts_ms, now_s)
  inc(CTR.joined)
  if rewarded == '1' then inc(CTR.joined_rewarded) else inc(CTR.joined_default) end
end

local function audit(id, v, ts, why)
  redis.call('XADD', A, 'MAXLEN', '~', amax, '*',
    AF.event_id, id, AF.value, v, AF.ts_ms, ts, AF.why, why)
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
    if bad > 0 then inc(CTR.decisions_invalid, bad) end
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
      inc(CTR.decisions_duplicate)
    else
      seen[id] = true
      inc(CTR.decisions_received)
      local due = tonumber(due_s)
      local state, done = false, false
      local held = early[id]
      if held then
        merged[#merged + 1] = id
        for v, ts in string.gmatch(held, '([^,;]+),([^;]+);') do
          if tonumber(ts) >= due then
            inc(CTR.rewards_late)
            audit(id, v, ts, WHY.late)
          elseif agg == 'earliest' then
            if done then
              inc(CTR.rewards_duplicate)
              audit(id, v, ts, WHY.duplicate)
            else
              emit(d, v, '1', '1')
              inc(CTR.rewards_joined)
              add_pair(new_c, due + 0.5, id)
              done = true
            end
          else
            state = fold(state, v)
            inc(CTR.rewards_joined)
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
-- ARGV[15]: msgpack array of (message id, event id, value, ts, moved-from id, valid,
-- idempotency key).
local rewards = {}
local used_keys = {}
batch = cmsgpack.unpack(ARGV[15])
i = 1
while i <= #batch do
  local msgid, id, v = batch[i], batch[i + 1], batch[i + 2]
  local ts, mv, ok, ik = batch[i + 3], batch[i + 4], batch[i + 5], batch[i + 6]
  i = i + 7
  if redis.call('XACK', RS, group, msgid) == 1 then
    if mv ~= '' and redis.call('ZADD', M, 'NX', now, mv) == 0 then
      inc(CTR.rewards_redelivered)
    elseif ok ~= '1' then
      inc(CTR.rewards_invalid)
      audit(id, v, ts, WHY.invalid)
    else
      inc(CTR.rewards_received)
      local member = id .. '|' .. ik
      if ik ~= '' and (used_keys[member] or redis.call('ZSCORE', KK, member)) then
        inc(CTR.rewards_duplicate)
        audit(id, v, ts, WHY.duplicate)
      else
        if ik ~= '' then
          used_keys[member] = true
          redis.call('ZADD', KK, now + key_ttl, member)
        end
        rewards[#rewards + 1] = {id, v, ts}
      end
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
        inc(CTR.rewards_late)
        audit(id, v, ts, WHY.late)
      elseif agg == 'earliest' then
        emit(d, v, '1', '1')
        inc(CTR.rewards_joined)
        pending[id] = false
        closed[id] = due + 0.5
        done_p[#done_p + 1] = id
        add_pair(new_c, due + 0.5, id)
      else
        states[id] = fold(states[id], v)
        changed_r[id] = true
        inc(CTR.rewards_joined)
      end
    elseif closed[id] then
      local score = tonumber(closed[id])
      if agg == 'earliest' and score % 1 ~= 0 and t < score then
        inc(CTR.rewards_duplicate)
        audit(id, v, ts, WHY.duplicate)
      else
        inc(CTR.rewards_late)
        audit(id, v, ts, WHY.late)
      end
    else
      local held = early[id]
      if not held then
        add_pair(new_ed, now + backward, id)
        held = ''
      end
      early[id] = held .. v .. ',' .. ts .. ';'
      changed_e[id] = true
      inc(CTR.rewards_early)
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
        inc(CTR.rewards_orphaned)
        audit(id, v, ts, WHY.orphan)
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
old = redis.call('ZCOUNT', KK, '-inf', now)
if old > 0 then redis.call('ZREMRANGEBYRANK', KK, 0, math.min(old, limit) - 1) end

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
