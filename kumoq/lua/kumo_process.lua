-- kumoq/kumo_process: kumo.spawn_task, kumo.available_parallelism,
-- kumo.set_diagnostic_log_filter, kumo.invoke_get_egress_path_config,
-- kumo.traceback, kumo.get_event_registrars and kumo.set_config_monitor_globs
-- / eval_config_monitor_globs, and kumo.make_message (from kumoq/message). Arguments: py (the Python functions of
-- kumoq.lua.kumo_extras), M (kumoq's private table) and kumo.
--
-- Loaded by kumoq/kumo (kumo.lua) as the chunk '=kumoq/kumo_process'.
-- Formatted with stylua and KumoMTA's stylua.toml.

local py, M, kumo = ...
local ERR, REJECT, plain = M.ERR, M.REJECT, M.plain
local setmetatable, type, error, pack = setmetatable, type, error, table.pack

local function result(r, e)
  if r == ERR then
    error(e, 3)
  end
  return r
end

-- kumo.spawn_task { event_name = 'my.task', args = { ... } }: fire the event
-- in the background (kumoq.lua.tasks), its handler given args.
local py_spawn = py.x_spawn_task
function kumo.spawn_task(params)
  if type(params) ~= 'table' then
    error('spawn_task: expected a table, got ' .. type(params), 2)
  end
  result(py_spawn(plain(params)))
end

local py_parallelism, py_log_filter = py.x_parallelism, py.x_log_filter
function kumo.available_parallelism()
  local n = result(py_parallelism())
  return n
end

function kumo.set_diagnostic_log_filter(filter)
  if type(filter) ~= 'string' or utf8.len(filter) == nil then
    error(
      'set_diagnostic_log_filter: expected a filter string, got '
        .. type(filter),
      2
    )
  end
  result(py_log_filter(filter))
end

-- kumo.invoke_get_egress_path_config(routing_domain, egress_source,
-- site_name): fire get_egress_path_config in this call, and hand back the
-- effective config as a make_egress_path parameter table. A reject raised
-- by the handlers goes on up; so does an error, with its own location.
local py_path = py.x_path_config
function kumo.invoke_get_egress_path_config(routing_domain, source, site)
  for i, v in ipairs { routing_domain, source, site } do
    if type(v) ~= 'string' then
      error(
        'invoke_get_egress_path_config: argument #'
          .. i
          .. ' must be a string, got '
          .. type(v),
        2
      )
    end
  end
  local res = pack(
    M.invoke('get_egress_path_config', '', routing_domain, source, site)
  )
  local status = res[1]
  if status == 0 then
    error(res[2], 0)
  elseif status == 3 then
    error(
      setmetatable({ code = res[2], message = res[3], how = res[4] }, REJECT),
      0
    )
  end
  local config
  if status == 2 then
    config = result(py_path('opaque', res[2]))
  else
    config = result(py_path('table', plain(res[2])))
  end
  return config
end

-- kumo.traceback(level): the call stack from level up (1 is the function
-- that calls traceback), one table per frame with mlua's field names.
local getinfo = M.getinfo
function kumo.traceback(level)
  level = level or 1
  if math.type(level) ~= 'integer' or level < 0 then
    error('traceback: level must be an integer >= 0', 2)
  end
  local frames = {}
  local l = level + 1
  while true do
    local info = getinfo(l, 'nSlt')
    if info == nil then
      break
    end
    frames[#frames + 1] = {
      event = 'Call',
      name = info.name,
      name_what = info.namewhat ~= '' and info.namewhat or nil,
      source = info.source,
      short_src = info.short_src,
      line_defined = info.linedefined >= 0 and info.linedefined or nil,
      last_line_defined = info.lastlinedefined >= 0 and info.lastlinedefined
        or nil,
      what = info.what,
      curr_line = info.currentline >= 0 and info.currentline or nil,
      is_tail_call = info.istailcall,
    }
    l = l + 1
  end
  return frames
end

-- kumo.make_message(sender, recipient, body): kumoq/message builds it.
kumo.make_message = M.make_message

-- kumo.get_event_registrars(name): where each kumo.on for the event was
-- called, a list of "file:line" frames per call (kumoq/core records them).
function kumo.get_event_registrars(name)
  if type(name) ~= 'string' then
    error('get_event_registrars: expected an event name, got ' .. type(name), 2)
  end
  return M.event_registrars(name)
end

-- kumo.set_config_monitor_globs { GLOB, ... } and eval_config_monitor_globs():
-- the globs are kept (KumoMTA's default until set); evaluating them lists the
-- files they match (kumoq.lua.host). kumoq does not watch the files.
local monitor_globs = { '/opt/kumomta/etc/**/*.{lua,json,toml,yaml}' }
function kumo.set_config_monitor_globs(globs)
  if type(globs) ~= 'table' then
    error(
      'set_config_monitor_globs: expected a list of globs, got ' .. type(globs),
      2
    )
  end
  local copy = {}
  for i, g in ipairs(globs) do
    if type(g) ~= 'string' then
      error(
        'set_config_monitor_globs: glob #' .. i .. ' is a ' .. type(g),
        2
      )
    end
    copy[i] = g
  end
  monitor_globs = copy
end

local py_globs = py.x_eval_globs
function kumo.eval_config_monitor_globs()
  return result(py_globs(monitor_globs))
end
