-- Breaker admission, atomically: _machine.Machine.acquire, step for step.
-- KEYS[1] breaker hash. ARGV: now; "wait half_open_calls ttl trial_timeout window_type
-- window_size" (one argument: it changes only with the options); and the successes this
-- worker held back: permit, count.
-- Timestamps are stored as the caller's own text (ARGV[1]): tostring() keeps
-- only 14 digits, and a rounded opened_at would move the reopen boundary.
-- Returns {permit, retry_after or "", transition or ""}, or the permit alone when
-- closed (the common answer, the cheapest to send and parse); a permit is its kind
-- (1 closed, 3 closed with a full count window, 2 half-open) plus 4 x the breaker's
-- generation, 0 when refused.
-- (Floats go back as strings: Redis would truncate a Lua number to an integer.)
-- One HMGET reads every field a decision needs: a closed breaker with no failure in its
-- window costs that one command.
local key = KEYS[1]
local now = tonumber(ARGV[1])
local wait, half_open_calls, ttl, trial_timeout, window_type, size =
  string.match(ARGV[2], '^(%S+) (%S+) (%S+) (%S+) (%S+) (%S+)$')
wait, half_open_calls, ttl = tonumber(wait), tonumber(half_open_calls), tonumber(ttl)
trial_timeout, size = tonumber(trial_timeout), tonumber(size)

local v = redis.call('hmget', key, 'st', 'g', 'oa', 'pm', 'hs', 'rl', 'idx', 'f', 's')
local st = tonumber(v[1] or '0')
local gen = tonumber(v[2] or '0')
if st == 0 then
  local rl = tonumber(v[6] or '0')
  record_deferred(key, tonumber(ARGV[3]), tonumber(ARGV[4]), size, gen, st, rl, tonumber(v[7] or '0'),
    tonumber(v[8] or '0'), tonumber(v[9] or '0'))
  local kind = (window_type == 'count' and rl >= size) and 3 or 1
  return kind + 4 * gen
end
if st == 4 then
  return 1 + 4 * gen
end
if st == 3 then
  return {0, '', ''}
end
local transition = ''
local permits = tonumber(v[4] or '0')
local half_open_since = tonumber(v[5] or '0')
if st == 1 then
  local reopen_at = tonumber(v[3] or '0') + wait
  if now < reopen_at then
    return {0, tostring(reopen_at - now), ''}
  end
  gen = gen + 1
  permits = 0
  half_open_since = now
  redis.call('hset', key, 'st', 2, 'tr', 0, 'tf', 0, 'ts', 0, 'hs', ARGV[1], 'g', gen)
  transition = 'half_open'
end
if permits >= half_open_calls then
  local reissue_at = half_open_since + trial_timeout
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
