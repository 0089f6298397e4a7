-- Drop deferred events whose deadline passed unactivated, and count them.
-- KEYS[1]: the deferred hash, KEYS[2]: its deadlines, KEYS[3]: the join counters.
-- ARGV[1]: now (ms), ARGV[2]: the never-activated counter's name, ARGV[3]: at most this many.
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1], 'LIMIT', 0, ARGV[3])
if #due == 0 then
  return 0
end
redis.call('HDEL', KEYS[1], unpack(due))
redis.call('ZREM', KEYS[2], unpack(due))
redis.call('HINCRBY', KEYS[3], ARGV[2], #due)
return #due
