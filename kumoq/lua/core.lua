-- kumoq/core: events. kumo.on, dispatch (for the multi-handler events, the
-- first handler that returns something wins), error capture with the
-- policy's file:line, custom_lua connections, and the coroutine every call
-- into the policy runs in. Arguments: M (kumoq's private table, already
-- holding what sandbox.lua and message.lua put there) and the set of
-- multi-handler event names.
--
-- Loaded by kumoq.lua.runtime as the chunk '=kumoq/core'. Formatted with
-- stylua and KumoMTA's stylua.toml.

local M, multi = ...
local REJECT, OPAQUE, getinfo, raw_load, wrap =
  M.REJECT, M.OPAQUE, M.getinfo, M.load, M.wrap
local type, error, tostring, getmetatable, xpcall, pairs, select =
  type, error, tostring, getmetatable, xpcall, pairs, select
local byte, find, format = string.byte, string.find, string.format

local handlers = {}
-- where each event's first handler was registered ("file:line"), for the
-- load-time report of handlers kumoq never calls (kumoq.lua.events)
local sites = {}
-- the call stack of every kumo.on, per event, for kumo.get_event_registrars
local registrars = {}
local phase = 'load'
function M.set_phase(p)
  phase = p
end

function M.on(name, fn)
  if phase ~= 'load' then
    error(
      'kumo.on: handlers must be registered while the policy loads, not from inside an '
        .. 'event handler (tried to register '
        .. tostring(name)
        .. ')',
      2
    )
  end
  if type(name) ~= 'string' then
    error('kumo.on: the event name must be a string, got ' .. type(name), 2)
  end
  if type(fn) ~= 'function' then
    error(
      'kumo.on: the handler for '
        .. name
        .. ' must be a function, got '
        .. type(fn),
      2
    )
  end
  local stack, level = {}, 2 -- 2: the code that called kumo.on
  while true do
    local info = getinfo(level, 'Sl')
    if info == nil then
      break
    end
    local line = info.currentline >= 0 and info.currentline or 0
    stack[#stack + 1] = info.short_src .. ':' .. line
    level = level + 1
  end
  local regs = registrars[name] or {}
  regs[#regs + 1] = stack
  registrars[name] = regs
  local list = handlers[name]
  if list == nil then
    handlers[name] = { fn }
    sites[name] = M.where(2) or '?'
    return
  end
  if not multi[name] then
    local info = getinfo(list[1], 'S')
    error(
      format(
        '%s event already has a handler defined at %s:%d',
        name,
        info.short_src,
        info.linedefined
      ),
      2
    )
  end
  list[#list + 1] = fn
end

-- kumo.get_event_registrars(name): one list of "file:line" frames (the
-- caller of kumo.on first) per kumo.on for that event, or nil (a copy)
function M.event_registrars(name)
  local regs = registrars[name]
  if regs == nil then
    return nil
  end
  local out = {}
  for i, stack in ipairs(regs) do
    out[i] = table.move(stack, 1, #stack, 1, {})
  end
  return out
end

-- { [event name] = "file:line" of its first kumo.on }
function M.handler_names()
  local out = {}
  for k in pairs(handlers) do
    out[k] = sites[k]
  end
  return out
end

-- the handler running, for M.defined_at: a memory error has no location
local current

-- whether a handler returned anything at all: for a multi-handler event, one
-- that returns nothing lets the next run; a return of any value, nil
-- included, ends the dispatch (as KumoMTA's CallbackSignature::call)
local function returned_any(...)
  return select('#', ...) > 0, (...)
end

local function fire(name, ...)
  local list = handlers[name]
  if list == nil then
    return nil
  end
  local n = #list
  if n == 1 then
    current = list[1]
    return current(...)
  end
  for i = 1, n do
    current = list[i]
    local returned, r = returned_any(current(...))
    if returned then
      return r
    end
  end
  return nil
end

-- "file:line" where the handler that ran last was defined, or nil
function M.defined_at()
  local info = current and getinfo(current, 'S')
  if info == nil or byte(info.source, 1) ~= 64 then
    return nil
  end
  return info.short_src .. ':' .. info.linedefined
end

-- the innermost frame running policy code ('@' chunks), as "file:line"
local function where(level)
  while true do
    local info = getinfo(level, 'Sl')
    if info == nil then
      return nil
    end
    if info.currentline > 0 and byte(info.source, 1) == 64 then
      return info.short_src .. ':' .. info.currentline
    end
    level = level + 1
  end
end
M.where = where

local function on_error(e)
  if getmetatable(e) == REJECT then
    return e
  end
  local msg = e
  if type(msg) ~= 'string' then
    msg = tostring(msg)
  end
  if utf8.len(msg) == nil then
    msg = string.gsub(msg, '[\128-\255]', '?')
  end
  if not find(msg, '^[^\n]-:%d+: ') then
    local loc = where(2)
    if loc ~= nil then
      msg = loc .. ': ' .. msg
    end
  end
  return msg
end

local function finish(ok, r, ...)
  if ok then
    local h = OPAQUE[r]
    if h ~= nil then
      return 2, h
    end
    if type(r) == 'table' and M.plain ~= nil then
      r = M.plain(r) -- a memoized view or domain map reads as {} from Python otherwise
    end
    return 1, r, ...
  end
  if getmetatable(r) == REJECT then
    return 3, r.code, r.message, r.how
  end
  return 0, r
end

function M.invoke(name, shape, ...)
  if shape == '' then
    return finish(xpcall(fire, on_error, name, ...))
  end
  return finish(xpcall(fire, on_error, name, wrap(shape, 1, ...)))
end

-- custom_lua delivery: the constructor event's connection table, kept here
-- under a handle so that Python never holds a Lua table it could leak back,
-- and called as conn:send(msg) or conn:send_batch(msgs).
local CONNS, next_conn = {}, 0

function M.construct(name, ...)
  local res = table.pack(xpcall(fire, on_error, name, ...))
  if not res[1] then
    return finish(false, res[2])
  end
  local conn = res[2]
  if
    type(conn) ~= 'table'
    or (type(conn.send) ~= 'function' and type(conn.send_batch) ~= 'function')
  then
    return 0,
      name
        .. ': the constructor must return a table with a send or send_batch '
        .. 'method, got '
        .. type(conn)
  end
  next_conn = next_conn + 1
  CONNS[next_conn] = conn
  return 1, next_conn
end

function M.conn_send(h, shape, ...)
  local conn = CONNS[h]
  if conn == nil then
    return 0, 'custom_lua connection is closed'
  end
  return finish(xpcall(function(...)
    return conn:send(...)
  end, on_error, wrap(shape, 1, ...)))
end

function M.conn_send_batch(h, ...)
  local conn = CONNS[h]
  if conn == nil then
    return 0, 'custom_lua connection is closed'
  end
  if type(conn.send_batch) ~= 'function' then
    return 0,
      'custom_lua: batch_size > 1 needs a send_batch method on the connection table'
  end
  local msgs = { ... }
  for i = 1, #msgs do
    msgs[i] = wrap('m', 1, msgs[i])
  end
  return finish(xpcall(function()
    return conn:send_batch(msgs)
  end, on_error))
end

function M.conn_close(h)
  local conn = CONNS[h]
  CONNS[h] = nil
  if conn ~= nil and type(conn.close) == 'function' then
    return finish(xpcall(function()
      return conn:close()
    end, on_error))
  end
  return 1, nil
end

-- Every call into the policy runs in a coroutine of its own, so that a kumo
-- function that must wait (kumo.dns.lookup_mx) can yield (PENDING, op, arg)
-- to kumoq and be resumed with (ok, answer), and so that the count hook of
-- budget.lua (M.watch, M.arm, M.disarm) can stop it at the deadline kumoq
-- gives with each resume. M.run/M.resume_event return finish()'s results,
-- -1, co, op, arg while waiting, 4, where when the time budget stopped it, or
-- 0, 'not enough memory' when too little memory is left to hand the results
-- to Python (M.room).
local create, resume, costatus =
  coroutine.create, coroutine.resume, coroutine.status
local PENDING, OURS = {}, setmetatable({}, { __mode = 'k' })
M.PENDING, M.EVENT_COROUTINES = PENDING, OURS

local function step(co, d0, s0, ok, ...)
  local stopped_at = M.disarm(d0, s0)
  if stopped_at ~= nil then
    return 4, stopped_at
  end
  if not M.room() then
    return 0, 'not enough memory'
  end
  if not ok then
    local e = ...
    if type(e) == 'table' or type(e) == 'userdata' then
      return 0, 'a handler raised a ' .. type(e) .. ' value'
    end
    return 0, tostring(e)
  end
  if costatus(co) == 'suspended' then
    local marker, op, arg = ...
    if marker ~= PENDING then
      return 0,
        'a handler called coroutine.yield outside a coroutine of its own'
    end
    return -1, co, op, arg
  end
  return ...
end

function M.run(deadline, fn, ...)
  local co = create(fn)
  OURS[co] = true
  M.watch(co)
  current = nil
  local d0, s0 = M.arm(deadline)
  return step(co, d0, s0, resume(co, ...))
end

function M.resume_event(deadline, co, ...)
  local d0, s0 = M.arm(deadline)
  return step(co, d0, s0, resume(co, ...))
end

function M.load_policy(src, chunkname)
  local chunk, err = raw_load(src, '@' .. chunkname, 't')
  if chunk == nil then
    return 0, err
  end
  return finish(xpcall(chunk, on_error))
end
