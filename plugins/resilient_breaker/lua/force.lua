-- Manual control, atomically: _machine.Machine.force. The generation survives
-- (and advances), so permits handed out before are not counted after.
-- KEYS[1] breaker hash. ARGV: state, opened_at ("0" unless forced open), ttl.
local key = KEYS[1]
local gen = tonumber(redis.call('hget', key, 'g') or '0') + 1
redis.call('del', key)
redis.call('hset', key, 'st', ARGV[1], 'oa', ARGV[2], 'g', gen)
redis.call('expire', key, tonumber(ARGV[3]))
return gen
