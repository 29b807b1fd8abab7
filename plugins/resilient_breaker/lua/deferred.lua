-- Prepended to acquire.lua and record.lua: the successes a worker held back, recorded
-- before the script's own decision (_machine.Machine.record_deferred). A success of a
-- TOKEN_FULL permit (closed, full count window) cannot trip the breaker, so the worker
-- sends it with its next call to that breaker instead of in a round trip of its own.
-- permit, count: that permit and how many of its successes; gen, st, rl, idx, f, s: the
-- hash's fields as the script read them. Returns idx, f, s after the successes.
-- Nothing is written when the window holds no failure and no slow call: replacing an OK
-- with an OK changes nothing, and an all-OK ring is the same ring from any index.
local function record_deferred(key, permit, count, size, gen, st, rl, idx, f, s)
  if count <= 0 or st ~= 0 or rl < size or math.floor(permit / 4) ~= gen or (f == 0 and s == 0) then
    return idx, f, s
  end
  if count > size then count = size end -- (after `size` successes the ring is all OK)
  local names = {}
  for i = 0, count - 1 do names[#names + 1] = 'r' .. ((idx + i) % size) end
  local old = redis.call('hmget', key, unpack(names))
  local writes = {}
  for i, name in ipairs(names) do
    local code = tonumber(old[i] or '0')
    f = f - code % 2
    s = s - math.floor(code / 2) % 2
    writes[#writes + 1] = name
    writes[#writes + 1] = 0
  end
  idx = (idx + count) % size
  redis.call('hset', key, 'idx', idx, 'f', f, 's', s, unpack(writes))
  return idx, f, s
end

