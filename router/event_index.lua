-- Index one flush's event ids server-side: the client sends them as one argument
-- (redis-py packs each argument in Python, ~25k instructions per HSET field pair).
-- Event ids are printable (banditgate.contracts), so a newline separates them safely.
-- KEYS[1]: the index bucket; ARGV: the ids, the experiment, the bucket's expiry in s.
for id in string.gmatch(ARGV[1], '[^\n]+') do
  redis.call('HSET', KEYS[1], id, ARGV[2])
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
