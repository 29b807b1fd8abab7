-- Breaker outcome, atomically: _machine.Machine.record, step for step.
-- KEYS[1] breaker hash. ARGV: now, permit (kind + 4 x generation), code (-1 ignored; bit 1 failure,
-- bit 2 slow), failure_rate, window_type ("count"/"time"), window_size,
-- minimum_calls, slow_rate (-1: not judged), half_open_calls, ttl.
-- Timestamps are stored as the caller's own text (ARGV[1]): tostring() keeps
-- only 14 digits, and a rounded opened_at would move the reopen boundary.
-- Returns the transition taken ("open", "closed") or "".
local key = KEYS[1]
local now = tonumber(ARGV[1])
local token = tonumber(ARGV[2])
local code = tonumber(ARGV[3])
local failure_rate = tonumber(ARGV[4])
local window_type = ARGV[5]
local size = tonumber(ARGV[6])
local minimum = tonumber(ARGV[7])
local slow_rate = tonumber(ARGV[8])
local half_open_calls = tonumber(ARGV[9])
local ttl = tonumber(ARGV[10])

local function num(field)
  return tonumber(redis.call('hget', key, field) or '0')
end

local function tripped(n, f, s)
  if f >= failure_rate * n then return true end
  return slow_rate >= 0 and s >= slow_rate * n
end

local function clear_window()
  local fields = redis.call('hkeys', key)
  for _, name in ipairs(fields) do
    local c = string.sub(name, 1, 1)
    if c == 'r' or c == 'b' then redis.call('hdel', key, name) end
  end
  redis.call('hset', key, 'idx', 0, 'rl', 0, 'old', 0, 'n', 0, 'f', 0, 's', 0)
end

local function open()
  redis.call('hset', key, 'st', 1, 'oa', ARGV[1], 'pm', 0, 'tr', 0, 'tf', 0, 'ts', 0)
  redis.call('hincrby', key, 'g', 1)
  clear_window()
end

local function sweep()
  local cutoff = math.floor(now) - size
  if num('n') == 0 then
    redis.call('hset', key, 'old', cutoff + 1)
    return
  end
  local oldest = num('old')
  if cutoff - oldest >= size then
    clear_window()
    redis.call('hset', key, 'old', cutoff + 1)
    return
  end
  local n, f, s = num('n'), num('f'), num('s')
  while oldest <= cutoff do
    local bn = redis.call('hget', key, 'b' .. oldest .. 'n')
    if bn then
      n = n - tonumber(bn)
      f = f - tonumber(redis.call('hget', key, 'b' .. oldest .. 'f') or '0')
      s = s - tonumber(redis.call('hget', key, 'b' .. oldest .. 's') or '0')
      redis.call('hdel', key, 'b' .. oldest .. 'n', 'b' .. oldest .. 'f', 'b' .. oldest .. 's')
    end
    oldest = oldest + 1
  end
  redis.call('hset', key, 'old', oldest, 'n', n, 'f', f, 's', s)
end

-- A permit from an earlier generation: its state (or half-open round) is gone.
if math.floor(token / 4) ~= num('g') then
  return ''
end
local kind = token % 4
local st = num('st')
local failure = code >= 0 and (code % 2) or 0
local slow = code >= 0 and (math.floor(code / 2) % 2) or 0
local result = ''

if kind == 1 and st == 0 then
  if code < 0 then return '' end
  if window_type == 'count' then
    local len = num('rl')
    if len < size then
      redis.call('hset', key, 'r' .. len, code, 'rl', len + 1)
    else
      local idx = num('idx')
      local old = tonumber(redis.call('hget', key, 'r' .. idx) or '0')
      -- (no "-(x)": a negated zero reaches Redis as "-0", which it refuses as an integer)
      redis.call('hincrby', key, 'n', -1)
      if old % 2 == 1 then redis.call('hincrby', key, 'f', -1) end
      if math.floor(old / 2) % 2 == 1 then redis.call('hincrby', key, 's', -1) end
      redis.call('hset', key, 'r' .. idx, code, 'idx', (idx + 1) % size)
    end
  else
    sweep()
    local sec = math.floor(now)
    redis.call('hincrby', key, 'b' .. sec .. 'n', 1)
    redis.call('hincrby', key, 'b' .. sec .. 'f', failure)
    redis.call('hincrby', key, 'b' .. sec .. 's', slow)
  end
  -- (a full count window keeps its n: the -1 above and this +1 cancel; zero increments are skipped)
  local n = redis.call('hincrby', key, 'n', 1)
  local f = failure == 1 and redis.call('hincrby', key, 'f', 1) or num('f')
  local s = slow == 1 and redis.call('hincrby', key, 's', 1) or num('s')
  if n >= minimum and tripped(n, f, s) then
    open()
    result = 'open'
  end
elseif kind == 2 and st == 2 then
  if code < 0 then
    local permits = num('pm') - 1
    local trials = num('tr')
    if permits < trials then permits = trials end
    redis.call('hset', key, 'pm', permits)
  else
    local tr = redis.call('hincrby', key, 'tr', 1)
    local tf = redis.call('hincrby', key, 'tf', failure)
    local ts = redis.call('hincrby', key, 'ts', slow)
    if tr >= half_open_calls then
      if tripped(tr, tf, ts) then
        open()
        result = 'open'
      else
        redis.call('hset', key, 'st', 0, 'pm', 0, 'tr', 0, 'tf', 0, 'ts', 0)
        redis.call('hincrby', key, 'g', 1)
        clear_window()
        result = 'closed'
      end
    end
  end
end
redis.call('expire', key, ttl)
return result
