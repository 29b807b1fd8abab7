-- KEYS[1] the entry, KEYS[2] its lease.
-- ARGV[1] now (wall seconds), ARGV[2] lease token, ARGV[3] lease milliseconds, ARGV[4] '1' to take a lease on a miss.
-- An entry is stored as '<fresh until>|<data>'.
-- Returns the entry itself when it is fresh (a plain bulk reply: the hit path parses no array);
-- else {2, entry?} the caller holds the lease (makes the call); {3, entry?} another caller holds it;
-- {0, entry?} no lease asked. entry? is a stale entry, if any.
local v = redis.call('GET', KEYS[1])
if v then
  local bar = string.find(v, '|', 1, true)
  if bar and tonumber(string.sub(v, 1, bar - 1)) > tonumber(ARGV[1]) then
    return v
  end
end
local code = 0
if ARGV[4] == '1' then
  if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then
    code = 2
  else
    code = 3
  end
end
if v then
  return {code, v}
end
return {code}
