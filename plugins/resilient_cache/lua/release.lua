-- KEYS[1] a lease, ARGV[1] the token that took it: only its holder releases it.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
