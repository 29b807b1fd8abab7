-- Breaker admission, atomically: _machine.Machine.acquire, step for step.
-- KEYS[1] breaker hash. ARGV: now, wait, half_open_calls, ttl (seconds).
-- Timestamps are stored as the caller's own text (ARGV[1]): tostring() keeps
-- only 14 digits, and a rounded opened_at would move the reopen boundary.
-- Returns {token, retry_after or "", transition or ""} (floats as strings:
-- Redis would truncate a Lua number to an integer).
local key = KEYS[1]
local now = tonumber(ARGV[1])
local wait = tonumber(ARGV[2])
local half_open_calls = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])

local st = tonumber(redis.call('hget', key, 'st') or '0')
if st == 0 or st == 4 then
  return {1, '', ''}
end
if st == 3 then
  return {0, '', ''}
end
local transition = ''
if st == 1 then
  local reopen_at = tonumber(redis.call('hget', key, 'oa') or '0') + wait
  if now < reopen_at then
    return {0, tostring(reopen_at - now), ''}
  end
  redis.call('hset', key, 'st', 2, 'pm', 0, 'tr', 0, 'tf', 0, 'ts', 0, 'hs', ARGV[1])
  transition = 'half_open'
end
local permits = tonumber(redis.call('hget', key, 'pm') or '0')
local hold = math.max(wait, 1.0)
if permits >= half_open_calls then
  local since = tonumber(redis.call('hget', key, 'hs') or '0')
  if now - since < hold then
    return {0, tostring(math.max(since + hold - now, 0)), transition}
  end
  permits = tonumber(redis.call('hget', key, 'tr') or '0')
  redis.call('hset', key, 'hs', ARGV[1])
end
redis.call('hset', key, 'pm', permits + 1)
redis.call('expire', key, ttl)
return {2, '', transition}
