-- kumoq/kumo_shaping: kumo.shaping.load(files, options?) and the shaping
-- object it returns (get_egress_path_config, get_errors, get_warnings,
-- get_referenced_sources, hash). Arguments: py (the Python functions of
-- kumoq.lua.shaping_api), M (kumoq's private table) and kumo.
--
-- The files are read and merged in Python; the MX of each domain with
-- mx_rollup (the default) is looked up here with kumo.dns.lookup_mx, which
-- waits through the event coroutine (all of them fetched at once first, see
-- kumoq.lua.shaping_api). Called where waiting is not possible
-- (at the top of the policy, in init), a lookup fails and the domain is
-- reported at the dns_fail level, as a failed lookup is in KumoMTA.
--
-- Loaded by kumoq/kumo (kumo.lua) as the chunk '=kumoq/kumo_shaping'.
-- Formatted with stylua and KumoMTA's stylua.toml.

local py, M, kumo = ...
local ERR, OPAQUE, plain = M.ERR, M.OPAQUE, M.plain
local setmetatable, type, error, pcall, tostring, ipairs =
  setmetatable, type, error, pcall, tostring, ipairs

local py_read, py_prefetch = py.x_shaping_read, py.x_shaping_prefetch
local py_merge, py_call = py.x_shaping_merge, py.x_shaping_call

local SHAPING = { __metatable = 'kumo.shaping' }
function SHAPING.__tostring()
  return 'kumo.shaping'
end
-- no Python call in __gc: finalizers also run inside lua_close
function SHAPING.__gc(t)
  local h = OPAQUE[t]
  if h ~= nil then
    local dead = M.dead
    dead[#dead + 1] = h
  end
end

local methods = {}
for _, name in ipairs {
  'get_egress_path_config',
  'get_errors',
  'get_warnings',
  'get_referenced_sources',
  'hash',
} do
  methods[name] = function(self, ...)
    local h = OPAQUE[self]
    if h == nil then
      error('shaping:' .. name .. ': expected a shaping object as self', 2)
    end
    local r, e = py_call(h, name, ...)
    if r == ERR then
      error(e, 2)
    end
    return r
  end
end
function SHAPING.__index(_, k)
  local m = methods[k]
  if m == nil then
    error('shaping:' .. tostring(k) .. ' is not available in kumoq', 2)
  end
  return m
end
function SHAPING.__newindex()
  error('kumo.shaping: the object is read-only', 2)
end

kumo.shaping = {}
function kumo.shaping.load(files, options)
  if type(files) ~= 'table' then
    error(
      'kumo.shaping.load: expected a list of file names, got ' .. type(files),
      2
    )
  end
  if options ~= nil and type(options) ~= 'table' then
    error(
      'kumo.shaping.load: options must be a table, got ' .. type(options),
      2
    )
  end
  local h, domains = py_read(plain(files), options and plain(options))
  if h == ERR then
    error(domains, 2)
  end
  if #domains > 1 then
    py_prefetch(domains)
  end
  local sites = {}
  for _, domain in ipairs(domains) do
    local ok, mx = pcall(kumo.dns.lookup_mx, domain)
    if ok then
      sites[domain] = mx.site_name
    else
      sites[domain] = { error = tostring(mx) }
    end
  end
  local s, e = py_merge(h, sites)
  if s == ERR then
    error(e, 2)
  end
  local obj = setmetatable({}, SHAPING)
  OPAQUE[obj] = s
  return obj
end
