-- GCRA on the redis clock (kumoq; KumoMTA's throttle script's keys, arguments and answer).
-- KEYS[1]: the throttle key; ARGV: limit, period (s), max_burst, quantity.
local t = tonumber(ARGV[2]) / tonumber(ARGV[1])
local cost = t * tonumber(ARGV[4])
local tolerance = t * tonumber(ARGV[3])
local now = tonumber(redis.call('TIME')[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + cost
local diff = now - (new_tat - tolerance)
local remaining = math.floor(diff / t)
if remaining < 0 then
  local left = math.floor((now - (tat - tolerance)) / t)
  return {1, left, math.ceil(tat - now), math.ceil(-diff), tostring(diff), tostring(t)}
end
if remaining == 0 and cost <= 0 then
  return {1, 0, math.ceil(tat - now), 0, tostring(diff), tostring(t)}
end
local reset_after = math.ceil(new_tat - now)
if cost > 0 then
  redis.call('SET', KEYS[1], new_tat, 'EX', reset_after)
end
return {0, remaining, reset_after, 0, tostring(diff), tostring(t)}
