-- Append one log batch to a stream unless this writer already stored it.
-- A writer numbers its batches per stream in the order it sends them; a batch whose
-- reply was lost (timeout, reset, frozen server) is re-sent with the same number and
-- skipped here when it did land, so a replay never doubles a record.
-- KEYS[1]: the stream; KEYS[2]: the writer's last stored sequence number.
-- ARGV: sequence number, its expiry in s, stream maxlen, count field, count,
--       records field, records (a JSON array).
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local seq = tonumber(ARGV[1])
if seq <= last then
  return 0
end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', ARGV[4], ARGV[5], ARGV[6], ARGV[7])
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
return 1
