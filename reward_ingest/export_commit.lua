-- Step 2 of an export file's commit (see reward_ingest/export_worker.py): acknowledge the
-- file's joined entries and record the file pair, atomically.
-- KEYS: the joined stream, the experiment's export:committed hash.
-- ARGV: the group, the file id, its record, then the entry ids.
local stream, committed = KEYS[1], KEYS[2]
local group, file_id, record = ARGV[1], ARGV[2], ARGV[3]
local acked = 0
local i = 4
while i <= #ARGV do
  local j = math.min(i + 999, #ARGV)
  acked = acked + redis.call('XACK', stream, group, unpack(ARGV, i, j))
  i = j + 1
end
redis.call('HSET', committed, file_id, record)
return acked
