-- A connection-limit lease (kumoq; KumoMTA's limit.lua's keys, arguments and answers).
-- KEYS[1]: a sorted set of lease uuids scored by expiry; ARGV: now, expires, limit, uuid.
local now = math.floor(tonumber(ARGV[1]))
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 1)
if redis.call('ZCARD', KEYS[1]) + 1 > tonumber(ARGV[3]) then
  local soonest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.ceil(tonumber(soonest[2]) - now)
end
redis.call('ZADD', KEYS[1], 'NX', math.ceil(tonumber(ARGV[2])), ARGV[4])
return redis.status_reply('OK')
