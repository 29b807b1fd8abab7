-- Breaker admission, atomically: _machine.Machine.acquire, step for step.
-- KEYS[1] breaker hash. ARGV: now, wait, half_open_calls, ttl (seconds), trial_timeout.
-- Timestamps are stored as the caller's own text (ARGV[1]): tostring() keeps
-- only 14 digits, and a rounded opened_at would move the reopen boundary.
-- Returns {permit, retry_after or "", transition or ""}; a permit is its kind
-- (1 closed, 2 half-open) plus 4 x the breaker's generation, 0 when refused.
-- (Floats go back as strings: Redis would truncate a Lua number to an integer.)
local key = KEYS[1]
local now = tonumber(ARGV[1])
local wait = tonumber(ARGV[2])
local half_open_calls = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local trial_timeout = tonumber(ARGV[5])

local st = tonumber(redis.call('hget', key, 'st') or '0')
local gen = tonumber(redis.call('hget', key, 'g') or '0')
if st == 0 or st == 4 then
  return {1 + 4 * gen, '', ''}
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
  gen = gen + 1
  redis.call('hset', key, 'st', 2, 'pm', 0, 'tr', 0, 'tf', 0, 'ts', 0, 'hs', ARGV[1], 'g', gen)
  transition = 'half_open'
end
local permits = tonumber(redis.call('hget', key, 'pm') or '0')
if permits >= half_open_calls then
  local reissue_at = tonumber(redis.call('hget', key, 'hs') or '0') + trial_timeout
  if now < reissue_at then
    return {0, tostring(math.min(reissue_at - now, math.max(wait, 1.0))), transition}
  end
  gen = gen + 1
  permits = 0
  redis.call('hset', key, 'tr', 0, 'tf', 0, 'ts', 0, 'hs', ARGV[1], 'g', gen)
end
redis.call('hset', key, 'pm', permits + 1)
redis.call('expire', key, ttl)
return {2 + 4 * gen, '', transition}
