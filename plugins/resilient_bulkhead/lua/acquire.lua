-- Take a slot of a fleet-wide bulkhead: a sorted set of leases scored by expiry.
-- KEYS[1] the pool; ARGV: now (wall seconds), lease ttl (s), limit, token.
-- Expired leases (holders that died) are dropped first. Returns 1 if taken, else 0.
local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], math.ceil(ttl * 1000))
  return 1
end
return 0
