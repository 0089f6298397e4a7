-- Take the lock if free, or extend it if ours: one round trip, no race between the two.
-- KEYS[1]: the lock; ARGV[1]: the owner; ARGV[2]: the expiry in ms.
local holder = redis.call('GET', KEYS[1])
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
