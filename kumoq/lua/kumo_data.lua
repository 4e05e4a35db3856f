-- kumoq/kumo_data: kumo.serde (and the legacy kumo.json_* and kumo.toml_*
-- names), kumo.string and kumo.regex. Arguments: py (the Python functions of
-- kumoq.lua.kumo_extras), M (kumoq's private table) and kumo.
--
-- Strings go to Python only once checked to be UTF-8 (lupa would fail to
-- convert them); a number where a string is expected is converted, as mlua
-- does. Tables go to Python through M.plain, so views and domain maps
-- (kumo_cache.lua) are read through their metamethods.
--
-- Loaded by kumoq/kumo (kumo.lua) as the chunk '=kumoq/kumo_data'.
-- Formatted with stylua and KumoMTA's stylua.toml.

local py, M, kumo = ...
local ERR, plain = M.ERR, M.plain
local setmetatable, type, error, tostring, format, utf8len, mtype =
  setmetatable, type, error, tostring, string.format, utf8.len, math.type
local sub = string.sub

local function text(prefix, n, v)
  local t = type(v)
  if t == 'number' then
    return tostring(v)
  end
  if t ~= 'string' then
    error(
      format('%s: bad argument #%d (string expected, got %s)', prefix, n, t),
      3
    )
  end
  if utf8len(v) == nil then
    error(format('%s: argument #%d is not valid UTF-8', prefix, n), 3)
  end
  return v
end

-- kumo.serde
local serde = {}
kumo.serde = serde
local py_load, py_encode = py.x_load, py.x_encode
for _, name in ipairs {
  'json_load',
  'json_parse',
  'toml_load',
  'toml_parse',
  'yaml_load',
  'yaml_parse',
} do
  serde[name] = function(arg)
    if type(arg) ~= 'string' then
      error(name .. ': expected a string, got ' .. type(arg), 2)
    end
    local v, e = py_load(name, text(name, 1, arg))
    if v == ERR then
      error(e, 2)
    end
    return v
  end
end

local function encoder(fmt, name, pretty)
  return function(value)
    if type(value) == 'string' and utf8len(value) == nil then
      error(name .. ': string is not valid UTF-8', 2)
    end
    local s, e = py_encode(fmt, plain(value), pretty)
    if s == ERR then
      error(e:find('^' .. name .. ':') and e or (name .. ': ' .. e), 2)
    end
    return s
  end
end
serde.json_encode = encoder('json', 'json_encode', false)
serde.json_encode_pretty = encoder('json', 'json_encode_pretty', true)
serde.toml_encode = encoder('toml', 'toml_encode', false)
serde.toml_encode_pretty = encoder('toml', 'toml_encode_pretty', true)
serde.yaml_encode = encoder('yaml', 'yaml_encode', false)

-- KumoMTA keeps the names these had before kumo.serde (there is no
-- kumo.yaml_*).
for _, name in ipairs {
  'json_load',
  'json_parse',
  'json_encode',
  'json_encode_pretty',
  'toml_load',
  'toml_parse',
  'toml_encode',
  'toml_encode_pretty',
} do
  kumo[name] = serde[name]
end

-- kumo.string: each function's arguments, 's' a string, 'n' a count, 't' a
-- table, '?' an optional value.
local py_string = py.x_string
local string_mod = {}
kumo.string = string_mod
for name, spec in pairs {
  replace = 'sss',
  replacen = 'sssn',
  split = 'ss',
  splitn = 'sns',
  rsplit = 'ss',
  rsplitn = 'sns',
  split_whitespace = 's',
  split_ascii_whitespace = 's',
  trim = 's',
  trim_start = 's',
  trim_end = 's',
  wrap = 's??',
  eval_template = 'sst?',
} do
  local prefix = 'kumo.string.' .. name
  string_mod[name] = function(...)
    local args = table.pack(...)
    for i = 1, #spec do
      local kind, v = sub(spec, i, i), args[i]
      if kind == 's' then
        args[i] = text(prefix, i, v)
      elseif kind == 'n' and mtype(v) ~= 'integer' then
        error(
          format('%s: bad argument #%d (integer expected)', prefix, i),
          2
        )
      elseif kind == 't' then
        args[i] = plain(v)
      end
    end
    local r, e = py_string(name, table.unpack(args, 1, #spec))
    if r == ERR then
      error(prefix .. ': ' .. e, 2)
    end
    return r
  end
end
function string_mod.starts_with(s, prefix)
  s = text('kumo.string.starts_with', 1, s)
  prefix = text('kumo.string.starts_with', 2, prefix)
  return sub(s, 1, #prefix) == prefix
end
function string_mod.ends_with(s, suffix)
  s = text('kumo.string.ends_with', 1, s)
  suffix = text('kumo.string.ends_with', 2, suffix)
  return #suffix == 0 or sub(s, -#suffix) == suffix
end

-- kumo.regex: a compiled Regex object keeps its pattern (Python caches the
-- compiled form by its text).
local py_regex, py_compile, py_escape =
  py.x_regex, py.x_regex_compile, py.x_regex_escape
local PATTERN = setmetatable({}, { __mode = 'k' })
local methods = {}
local REGEX = { __metatable = 'Regex', __index = methods }
function REGEX.__tostring(r)
  return 'Regex(' .. PATTERN[r] .. ')'
end

local function method(name, spec)
  local prefix = 'regex:' .. name
  methods[name] = function(self, ...)
    local pattern = PATTERN[self]
    if pattern == nil then
      error(prefix .. ': call it as a method, re:' .. name .. '(...)', 2)
    end
    local args = table.pack(...)
    for i = 1, #spec do
      if sub(spec, i, i) == 's' then
        args[i] = text(prefix, i, args[i])
      elseif mtype(args[i]) ~= 'integer' then
        error(format('%s: bad argument #%d (integer expected)', prefix, i), 2)
      end
    end
    local r, e = py_regex(name, pattern, table.unpack(args, 1, #spec))
    if r == ERR then
      error(prefix .. ': ' .. e, 2)
    end
    return r
  end
end
method('captures', 's')
method('is_match', 's')
method('find', 's')
method('find_all', 's')
method('replace', 'ss')
method('replace_all', 'ss')
method('replacen', 'sns')
method('split', 's')

kumo.regex = {}
function kumo.regex.compile(pattern)
  pattern = text('kumo.regex.compile', 1, pattern)
  local ok, e = py_compile(pattern)
  if ok == ERR then
    error(e, 2)
  end
  local r = setmetatable({}, REGEX)
  PATTERN[r] = pattern
  return r
end
function kumo.regex.escape(s)
  local r, e = py_escape(text('kumo.regex.escape', 1, s))
  if r == ERR then
    error(e, 2)
  end
  return r
end
