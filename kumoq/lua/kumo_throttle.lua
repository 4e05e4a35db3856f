-- kumoq/kumo_throttle: kumo.make_throttle(name, spec) and its throttle
-- object (KumoMTA's docs/reference/kumo/make_throttle.md): throttle() checks
-- and counts, returning KumoMTA's result table; delay_message_if_throttled(msg)
-- sets the message's due time when throttled; sleep_if_throttled() yields
-- (PENDING, 'throttle_sleep', ...) to the event coroutine, as
-- kumo.time.sleep does, and kumoq.lua.throttle_api sleeps until the
-- throttle admits while the event loop carries on. Arguments: py (the
-- Python functions of kumoq.lua.kumo_api.python_api), M (kumoq's private
-- table) and kumo.
--
-- Loaded by kumo.lua as the chunk '=kumoq/kumo_throttle'. Formatted with
-- stylua and KumoMTA's stylua.toml.

local py, M, kumo = ...
local ERR, PENDING, EVENT_COROUTINES = M.ERR, M.PENDING, M.EVENT_COROUTINES
local setmetatable, error, tostring = setmetatable, error, tostring
local running, isyieldable, yield =
  coroutine.running, coroutine.isyieldable, coroutine.yield
local py_make, py_check, py_due, py_shared =
  py.kumo_make_throttle,
  py.kumo_throttle_check,
  py.kumo_throttle_due,
  py.kumo_throttle_shared

local STATE = setmetatable({}, { __mode = 'k' }) -- object -> {key, spec}

local Throttle = {}
local THROTTLE_MT = {
  __index = function(_, k)
    local method = Throttle[k]
    if method == nil then
      error('throttle:' .. tostring(k) .. ' is not available in kumoq', 2)
    end
    return method
  end,
  __metatable = false,
  __tostring = function(self)
    local s = STATE[self]
    return 'kumo throttle ' .. (s and s.name or '?')
  end,
}

local function state(self, method)
  local s = STATE[self]
  if s == nil then
    error(
      'throttle:' .. method .. ': expected a throttle object (call it with :)',
      3
    )
  end
  return s
end

-- Whether to ask a shared backend (redis, or the sibling workers) through
-- the event loop: it is configured for this spec and this handler can yield
-- (in an event kumoq calls synchronously, the op answers from the process's
-- own state at once: kumoq.lua.throttle_api).
local function ask_shared(s)
  local shared, e = py_shared(s.spec)
  if shared == ERR then
    error(e, 3)
  end
  return shared and EVENT_COROUTINES[running()] and isyieldable()
end

local function awaited(op, s)
  local ok, res = yield(PENDING, op, { key = s.key, spec = s.spec })
  if not ok then
    error(res, 3)
  end
  return res
end

function Throttle:throttle()
  local s = state(self, 'throttle')
  if ask_shared(s) then
    return awaited('throttle_check', s)
  end
  local r, e = py_check(s.key, s.spec)
  if r == ERR then
    error(e, 2)
  end
  return r
end

function Throttle:sleep_if_throttled()
  local s = state(self, 'sleep_if_throttled')
  if ask_shared(s) then
    return awaited('throttle_sleep', s)
  end
  local r, e = py_check(s.key, s.spec)
  if r == ERR then
    error(e, 2)
  elseif not r.throttled then
    return false
  end
  if not EVENT_COROUTINES[running()] or not isyieldable() then
    error(
      'throttle:sleep_if_throttled: cannot wait here; call it from the '
        .. 'handler itself, not from a coroutine, metamethod or callback '
        .. "of the policy's own",
      2
    )
  end
  local ok, res =
    yield(PENDING, 'throttle_sleep', { key = s.key, spec = s.spec })
  if not ok then
    error(res, 2)
  end
  return res
end

function Throttle:delay_message_if_throttled(msg)
  local s = state(self, 'delay_message_if_throttled')
  local due, e
  if ask_shared(s) then
    due = awaited('throttle_due', s)
  else
    due, e = py_due(s.key, s.spec)
  end
  if due == ERR then
    error(e, 2)
  elseif due == nil then
    return false
  end
  msg:set_due(due)
  return true
end

function kumo.make_throttle(name, spec)
  local key, e = py_make(name, spec)
  if key == ERR then
    error(e, 2)
  end
  local o = setmetatable({}, THROTTLE_MT)
  STATE[o] = { key = key, spec = spec, name = name }
  return o
end
