-- KEYS[1] the entry, KEYS[2] its lease. ARGV[1] the entry, ARGV[2] milliseconds to keep it,
-- ARGV[3] the lease token to release ('' when none is held).
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('DEL', KEYS[2])
end
return 1
