-- kumoq/kumo_time: kumo.time (Time and TimeDelta objects, now,
-- from_unix_timestamp, with_ymd_hms, parse_rfc2822, parse_rfc3339,
-- parse_duration, start_timer, sleep) and the older kumo.sleep. Arguments: py (the Python
-- functions of kumoq.lua.kumo_extras), M (kumoq's private table) and kumo.
--
-- A Time holds the nanoseconds since the Unix epoch, a TimeDelta a signed
-- number of nanoseconds, each an integer kept in a weak table; adding and
-- subtracting happen here, calendars and text in kumoq.lua.time_api. Both
-- are immutable and their metatables protected.
--
-- kumo.time.sleep yields to the event coroutine, as kumo.dns.lookup_mx does
-- (kumoq.lua.waits): the event loop carries on while the handler sleeps.
--
-- Loaded by kumoq/kumo (kumo.lua) as the chunk '=kumoq/kumo_time'.
-- Formatted with stylua and KumoMTA's stylua.toml.

local py, M, kumo = ...
local ERR = M.ERR
local setmetatable, getmetatable, type, error, tostring, mtype =
  setmetatable, getmetatable, type, error, tostring, math.type
local py_time = py.x_time

local NS = setmetatable({}, { __mode = 'k' }) -- object -> nanoseconds
local FIELDS = setmetatable({}, { __mode = 'k' }) -- Time -> its fields
local TIME = { __metatable = 'Time' }
local DELTA = { __metatable = 'TimeDelta' }

local function make(mt, ns)
  local o = setmetatable({}, mt)
  NS[o] = ns
  return o
end

local function call(op, ...)
  local r, e = py_time(op, ...)
  if r == ERR then
    error(e, 3)
  end
  return r
end

local function checked_add(a, b)
  local r = a + b
  if (b > 0 and r < a) or (b < 0 and r > a) then
    error('time would overflow', 3)
  end
  return r
end

local function is(o, mt)
  return type(o) == 'table' and getmetatable(o) == mt.__metatable and NS[o]
end

-- Integer division rounding toward zero, as chrono's num_milliseconds.
local function trunc_div(a, b)
  local q = a // b
  if q < 0 and q * b ~= a then
    q = q + 1
  end
  return q
end

local time_methods = {}
function time_methods.format(t, fmt)
  if not is(t, TIME) then
    error('Time:format: call it as a method, t:format(fmt)', 2)
  end
  if type(fmt) ~= 'string' then
    error('Time:format: expected a format string, got ' .. type(fmt), 2)
  end
  return call('format', NS[t], fmt)
end

function TIME.__index(t, k)
  if k == 'elapsed' then
    return make(DELTA, checked_add(call('now'), -NS[t]))
  end
  local m = time_methods[k]
  if m ~= nil then
    return m
  end
  local fields = FIELDS[t]
  if fields == nil then
    fields = call('fields', NS[t])
    FIELDS[t] = fields
  end
  local v = fields[k]
  if v == nil then
    error('Time has no field ' .. tostring(k), 2)
  end
  return v
end
function TIME.__newindex()
  error('Time objects are immutable', 2)
end
function TIME.__tostring(t)
  return call('text', NS[t])
end
function TIME.__eq(a, b)
  return is(a, TIME) and is(b, TIME) and NS[a] == NS[b]
end
function TIME.__add(a, b)
  if not (is(a, TIME) and is(b, DELTA)) then
    error('a Time can only be added a TimeDelta', 2)
  end
  return make(TIME, checked_add(NS[a], NS[b]))
end
function TIME.__sub(a, b)
  if not is(a, TIME) then
    error('only a Time can be subtracted from a Time', 2)
  end
  if is(b, TIME) then
    return make(DELTA, checked_add(NS[a], -NS[b]))
  end
  if is(b, DELTA) then
    return make(TIME, checked_add(NS[a], -NS[b]))
  end
  error('could not represent argument as either Time or TimeDelta', 2)
end

local delta_fields = {
  seconds = function(ns)
    return ns / 1e9
  end,
  nanoseconds = function(ns)
    return ns
  end,
  microseconds = function(ns)
    return trunc_div(ns, 1000)
  end,
  milliseconds = function(ns)
    return trunc_div(ns, 1000000)
  end,
  human = function(ns)
    return call('human', ns)
  end,
}
function DELTA.__index(d, k)
  local f = delta_fields[k]
  if f == nil then
    error('TimeDelta has no field ' .. tostring(k), 2)
  end
  return f(NS[d])
end
function DELTA.__newindex()
  error('TimeDelta objects are immutable', 2)
end
function DELTA.__tostring(d)
  return call('human', NS[d])
end
function DELTA.__eq(a, b)
  return is(a, DELTA) and is(b, DELTA) and NS[a] == NS[b]
end
function DELTA.__add(a, b)
  if not (is(a, DELTA) and is(b, DELTA)) then
    error('a TimeDelta can only be added a TimeDelta', 2)
  end
  return make(DELTA, checked_add(NS[a], NS[b]))
end
function DELTA.__sub(a, b)
  if not (is(a, DELTA) and is(b, DELTA)) then
    error('only a TimeDelta can be subtracted from a TimeDelta', 2)
  end
  return make(DELTA, checked_add(NS[a], -NS[b]))
end

local time = {}
kumo.time = time
function time.now()
  return make(TIME, call('now'))
end
function time.from_unix_timestamp(seconds)
  return make(TIME, call('from_unix_timestamp', seconds))
end
function time.with_ymd_hms(year, month, day, hour, minute, second)
  return make(
    TIME,
    call('with_ymd_hms', year, month, day, hour, minute, second)
  )
end
for _, name in ipairs { 'parse_rfc2822', 'parse_rfc3339' } do
  time[name] = function(text)
    if type(text) ~= 'string' or utf8.len(text) == nil then
      error(
        'kumo.time.'
          .. name
          .. ': expected a timestamp string, got '
          .. type(text),
        2
      )
    end
    return make(TIME, call(name, text))
  end
end
function time.parse_duration(value)
  if type(value) == 'string' and utf8.len(value) == nil then
    error('kumo.time.parse_duration: the duration is not valid UTF-8', 2)
  end
  return make(DELTA, call('parse_duration', value))
end

-- kumo.time.start_timer(label): a Timer whose :done() records the seconds
-- since its start in the user_lua_latency histogram (label `label`) and
-- returns them; a `local t <close> = ...` timer is done when it goes out of
-- scope. It records once: a later :done() only returns the seconds.
local TIMERS = setmetatable({}, { __mode = 'k' }) -- Timer -> its state
local TIMER = { __metatable = 'Timer', __index = {} }
function TIMER.__index.done(self)
  local state = TIMERS[self]
  if state == nil then
    error('timer:done(): expected a Timer from kumo.time.start_timer', 2)
  end
  local elapsed = call('monotonic') - state.start
  if not state.recorded then
    state.recorded = true
    call('user_lua_latency', state.label, elapsed)
  end
  return elapsed
end
function TIMER.__close(self)
  TIMER.__index.done(self)
end
function time.start_timer(label)
  if type(label) ~= 'string' then
    error(
      'kumo.time.start_timer: expected a label string, got ' .. type(label),
      2
    )
  end
  local timer = setmetatable({}, TIMER)
  TIMERS[timer] = { label = label, start = call('monotonic') }
  return timer
end

-- kumo.time.sleep(seconds) and kumo.sleep(seconds)
local running, isyieldable, yield =
  coroutine.running, coroutine.isyieldable, coroutine.yield
local PENDING, EVENT_COROUTINES = M.PENDING, M.EVENT_COROUTINES
function time.sleep(seconds)
  if type(seconds) ~= 'number' or seconds ~= seconds or seconds < 0 then
    error(
      'kumo.time.sleep: expected a number of seconds >= 0, got '
        .. tostring(seconds),
      2
    )
  end
  if mtype(seconds) == 'float' and seconds == math.huge then
    error('kumo.time.sleep: cannot sleep forever', 2)
  end
  if not EVENT_COROUTINES[running()] or not isyieldable() then
    error(
      'kumo.time.sleep: cannot wait here; call it from the handler itself, '
        .. "not from a coroutine, metamethod or callback of the policy's own",
      2
    )
  end
  local ok, res = yield(PENDING, 'sleep', seconds)
  if not ok then
    error(res, 2)
  end
end
kumo.sleep = time.sleep
