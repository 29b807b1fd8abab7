-- Breaker outcome, atomically: _machine.Machine.record, step for step.
-- KEYS[1] breaker hash. ARGV: now, permit (kind + 4 x generation), code (-1 ignored; bit 1 failure,
-- bit 2 slow); "failure_rate window_type window_size minimum_calls slow_rate half_open_calls
-- ttl" (one argument: it changes only with the options; slow_rate -1: not judged); and the
-- successes this worker held back: permit, count (recorded first, in the order they ended).
-- Timestamps are stored as the caller's own text (ARGV[1]): tostring() keeps
-- only 14 digits, and a rounded opened_at would move the reopen boundary.
-- Returns the transition taken ("open", "closed") or "".
-- The counters are read with one HMGET and written back with one HSET: a success in a
-- full count window costs HMGET, HGET (the ring slot it replaces), HSET and EXPIRE.
local key = KEYS[1]
local now = tonumber(ARGV[1])
local token = tonumber(ARGV[2])
local code = tonumber(ARGV[3])
local failure_rate, window_type, size, minimum, slow_rate, half_open_calls, ttl =
  string.match(ARGV[4], '^(%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+)$')
failure_rate, size, minimum = tonumber(failure_rate), tonumber(size), tonumber(minimum)
slow_rate, half_open_calls, ttl = tonumber(slow_rate), tonumber(half_open_calls), tonumber(ttl)

local v = redis.call('hmget', key, 'g', 'st', 'rl', 'idx', 'n', 'f', 's', 'old', 'pm', 'tr', 'tf', 'ts')
local function at(i)
  return tonumber(v[i] or '0')
end

local gen, st = at(1), at(2)
local idx, f0, s0 = record_deferred(key, tonumber(ARGV[5]), tonumber(ARGV[6]), size, gen, st, at(3), at(4),
  at(6), at(7))
-- A permit from an earlier generation: its state (or half-open round) is gone.
if math.floor(token / 4) ~= gen then
  return ''
end
local kind = token % 4
local failure = code >= 0 and (code % 2) or 0
local slow = code >= 0 and (math.floor(code / 2) % 2) or 0
local result = ''

local function tripped(n, f, s)
  if f >= failure_rate * n then return true end
  return slow_rate >= 0 and s >= slow_rate * n
end

-- Empties the window (ring slots and time buckets deleted, counts zeroed, its oldest second
-- set to `oldest`) and sets the fields given after it in the same HSET.
local function clear_window(oldest, ...)
  local doomed = {}
  for _, name in ipairs(redis.call('hkeys', key)) do
    local c = string.sub(name, 1, 1)
    if c == 'r' or c == 'b' then
      doomed[#doomed + 1] = name
      if #doomed == 1000 then -- (unpack is bounded by Lua's C stack)
        redis.call('hdel', key, unpack(doomed))
        doomed = {}
      end
    end
  end
  if #doomed > 0 then redis.call('hdel', key, unpack(doomed)) end
  redis.call('hset', key, 'idx', 0, 'rl', 0, 'old', oldest, 'n', 0, 'f', 0, 's', 0, ...)
end

local function open()
  clear_window(0, 'st', 1, 'oa', ARGV[1], 'pm', 0, 'tr', 0, 'tf', 0, 'ts', 0, 'g', gen + 1)
end

if (kind == 1 or kind == 3) and st == 0 then
  if code < 0 then return '' end
  local n, f, s = at(5), f0, s0
  if window_type == 'count' then
    local len = at(3)
    if len < size then
      n, f, s = n + 1, f + failure, s + slow
      redis.call('hset', key, 'r' .. len, code, 'rl', len + 1, 'n', n, 'f', f, 's', s)
    else
      -- a full ring: the new outcome replaces the oldest, n stays
      local old = tonumber(redis.call('hget', key, 'r' .. idx) or '0')
      f = f - old % 2 + failure
      s = s - math.floor(old / 2) % 2 + slow
      redis.call('hset', key, 'r' .. idx, code, 'idx', (idx + 1) % size, 'f', f, 's', s)
    end
  else
    -- sweep: drop the buckets that fell out of the last `size` seconds, then count in this second's
    local cutoff = math.floor(now) - size
    local oldest = at(8)
    if n == 0 then
      oldest = cutoff + 1
    elseif cutoff - oldest >= size then
      clear_window(cutoff + 1)
      n, f, s, oldest = 0, 0, 0, cutoff + 1
    else
      while oldest <= cutoff do
        local b = 'b' .. oldest
        local bucket = redis.call('hmget', key, b .. 'n', b .. 'f', b .. 's')
        if bucket[1] then
          n = n - tonumber(bucket[1])
          f = f - tonumber(bucket[2] or '0')
          s = s - tonumber(bucket[3] or '0')
          redis.call('hdel', key, b .. 'n', b .. 'f', b .. 's')
        end
        oldest = oldest + 1
      end
    end
    local b = 'b' .. math.floor(now)
    local bucket = redis.call('hmget', key, b .. 'n', b .. 'f', b .. 's')
    n, f, s = n + 1, f + failure, s + slow
    redis.call('hset', key, b .. 'n', tonumber(bucket[1] or '0') + 1, b .. 'f', tonumber(bucket[2] or '0') + failure,
      b .. 's', tonumber(bucket[3] or '0') + slow, 'old', oldest, 'n', n, 'f', f, 's', s)
  end
  if n >= minimum and tripped(n, f, s) then
    open()
    result = 'open'
  end
elseif kind == 2 and st == 2 then
  if code < 0 then
    local permits = at(9) - 1
    local trials = at(10)
    if permits < trials then permits = trials end
    redis.call('hset', key, 'pm', permits)
  else
    local tr, tf, ts = at(10) + 1, at(11) + failure, at(12) + slow
    if tr >= half_open_calls then
      if tripped(tr, tf, ts) then
        open()
        result = 'open'
      else
        clear_window(0, 'st', 0, 'pm', 0, 'tr', 0, 'tf', 0, 'ts', 0, 'g', gen + 1)
        result = 'closed'
      end
    else
      redis.call('hset', key, 'tr', tr, 'tf', tf, 'ts', ts)
    end
  end
end
redis.call('expire', key, ttl)
return result
