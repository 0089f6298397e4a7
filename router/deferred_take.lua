-- Take one deferred event for activation, atomically, so two activations never log it twice.
-- KEYS[1]: the deferred hash, KEYS[2]: its deadlines, KEYS[3]: the join counters.
-- ARGV[1]: the event id, ARGV[2]: now (ms), ARGV[3]: the never-activated counter's name.
-- Returns false (not deferred), {0, decisions} (past its deadline: dropped and counted),
-- or {1, decisions} (the caller logs them).
local decisions = redis.call('HGET', KEYS[1], ARGV[1])
if not decisions then
  return false
end
local deadline = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]))
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if deadline and deadline < tonumber(ARGV[2]) then
  redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
  return {0, decisions}
end
return {1, decisions}
