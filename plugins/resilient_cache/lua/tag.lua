-- KEYS[1] a tag's set, ARGV[1] an entry key, ARGV[2] milliseconds the entry is kept:
-- the set lives at least as long as its newest entry, never forever.
redis.call('SADD', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
