-- kumoq/budget: the time budget of every call into the policy, the sandbox
-- rules it needs, and the memory headroom. Arguments: M (kumoq's private
-- table, holding sethook and collectgarbage, kept by sandbox.lua before the
-- policy could touch them, and where, from core.lua), now (a monotonic clock
-- in seconds, from Python), count (VM instructions between two looks at the
-- clock; 0: no time budget) and high (KiB: the memory in use past which a
-- call must not return to Python; math.huge: no cap). Sets M.watch, M.arm,
-- M.disarm and M.room, which M.run and M.resume_event (core.lua) call around
-- every resume of an event coroutine.
--
-- M.watch(co) sets a count hook on the event coroutine. Past the deadline the
-- hook notes where the policy was and raises; from then on it raises at every
-- instruction of every coroutine that runs, so that a pcall cannot swallow
-- the error and carry on, until the resume returns to kumoq. M.disarm then
-- reports the budget error, whatever the handler did with it.
--
-- Lua runs no hook inside a hook, and an error raised by a hook leaves hooks
-- off until a pcall catches it: a message handler of xpcall, or a __close
-- metamethod run when a coroutine dies of it, would run with no budget. So
-- once the budget is spent xpcall skips the policy's message handler, and
-- the coroutines the policy creates run their body under a pcall. A hook also
-- does not follow a coroutine into the coroutines it creates, so
-- coroutine.create and coroutine.wrap set it on theirs. A finalizer runs with
-- hooks off, at any allocation, outside any event, so setmetatable refuses a
-- metatable with a __gc field.
--
-- M.room() keeps the headroom under the memory cap that lupa needs to hand
-- the results to Python (see kumoq/lua/budget.py): past `high` it collects,
-- and says false if that was not enough.
--
-- Loaded by kumoq.lua.runtime as the chunk '=kumoq/budget', last: the chunks
-- before it keep the raw functions it replaces. Formatted with stylua and
-- KumoMTA's stylua.toml.

local M, now, count, high = ...
local sethook, where, gc = M.sethook, M.where, M.collectgarbage
local running, raw_create, raw_wrap =
  coroutine.running, coroutine.create, coroutine.wrap
local raw_setmetatable, raw_xpcall, pcall, rawget, type, error, pairs, format =
  setmetatable, xpcall, pcall, rawget, type, error, pairs, string.format

-- What the policy sees if it catches the error.
local EXCEEDED = 'kumoq: the Lua time budget of this call is exhausted'
local deadline, stopped_at = math.huge, nil
local every_instruction = raw_setmetatable({}, { __mode = 'k' })

local function hook()
  if stopped_at == nil then
    if now() <= deadline then
      return
    end
    stopped_at = where(2) or ''
  end
  local co = running()
  if not every_instruction[co] then
    every_instruction[co] = true
    sethook(co, hook, '', 1)
  end
  error(EXCEEDED, 0)
end

if count > 0 then
  function M.watch(co)
    sethook(co, hook, '', count)
  end
else
  function M.watch() end
end

-- Starts a resume: returns the state to give back to M.disarm (a resume of
-- kumoq's inside a Python function the policy called nests).
function M.arm(d)
  local d0, s0 = deadline, stopped_at
  deadline, stopped_at = d, nil
  return d0, s0
end

-- Ends a resume: nil, or where the policy was stopped ('' when no frame of
-- the policy was running).
function M.disarm(d0, s0)
  local s = stopped_at
  deadline, stopped_at = d0, s0
  if s ~= nil then
    for co in pairs(every_instruction) do
      every_instruction[co] = nil
      sethook(co, hook, '', count)
    end
  end
  return s
end

if high == math.huge then
  function M.room()
    return true
  end
else
  function M.room()
    if gc 'count' <= high then
      return true
    end
    gc 'collect'
    return gc 'count' <= high
  end
end

-- A bad argument, as the C functions say it, at the policy's line (none in a
-- tail call).
local function check(fname, n, value)
  if type(value) ~= 'function' then
    local at = where(2)
    error(
      (at and at .. ': ' or '')
        .. format(
          "bad argument #%d to '%s' (function expected, got %s)",
          n,
          fname,
          type(value)
        ),
      0
    )
  end
end

if count > 0 then
  local function rethrow(ok, ...)
    if ok then
      return ...
    end
    error((...), 0)
  end
  local function hooked(f)
    return function(...)
      sethook(running(), hook, '', stopped_at == nil and count or 1)
      return rethrow(pcall(f, ...))
    end
  end
  function coroutine.create(f)
    check('create', 1, f)
    return raw_create(hooked(f))
  end
  function coroutine.wrap(f)
    check('wrap', 1, f)
    return raw_wrap(hooked(f))
  end
  function xpcall(f, msgh, ...)
    check('xpcall', 2, msgh)
    return raw_xpcall(f, function(e)
      if stopped_at ~= nil then
        return e
      end
      return msgh(e)
    end, ...)
  end
end

function setmetatable(t, mt)
  if type(mt) == 'table' and rawget(mt, '__gc') ~= nil then
    error(
      'setmetatable: kumoq does not run __gc metamethods of the policy: '
        .. 'a finalizer runs outside any event, where no time budget can '
        .. 'stop it',
      2
    )
  end
  return raw_setmetatable(t, mt)
end
