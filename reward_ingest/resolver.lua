-- Settle unrouted rewards: see reward_ingest/resolver.py.
-- KEYS: the unrouted stream, its counters, the orphans stream.
-- ARGV[1]: the wire names (banditgate.contracts), by role; ARGV[2]: the group; ARGV[3]: the
-- orphans stream's MAXLEN; then three lists, each its length followed by its items:
-- resolved message ids; orphans as (message id, event id, value, ts); unreadable message ids.
local S, K, O = KEYS[1], KEYS[2], KEYS[3]
local names = cmsgpack.unpack(ARGV[1])
local F, C = names.reward, names.counter
local group, omax = ARGV[2], ARGV[3]
local i = 4
local resolved, orphaned, invalid = 0, 0, 0
for _ = 1, tonumber(ARGV[i]) do
  i = i + 1
  resolved = resolved + redis.call('XACK', S, group, ARGV[i])
end
i = i + 1
for _ = 1, tonumber(ARGV[i]) do
  local msgid, id, v, ts = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  i = i + 4
  if redis.call('XACK', S, group, msgid) == 1 then
    orphaned = orphaned + 1
    redis.call('XADD', O, 'MAXLEN', '~', omax, '*', F.event_id, id, F.value, v, F.ts_ms, ts)
  end
end
i = i + 1
for _ = 1, tonumber(ARGV[i]) do
  i = i + 1
  invalid = invalid + redis.call('XACK', S, group, ARGV[i])
end
if resolved > 0 then redis.call('HINCRBY', K, C.rewards_resolved, resolved) end
if orphaned > 0 then redis.call('HINCRBY', K, C.rewards_orphaned, orphaned) end
if invalid > 0 then redis.call('HINCRBY', K, C.rewards_invalid, invalid) end
return {resolved, orphaned, invalid}
