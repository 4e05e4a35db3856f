-- kumoq/message: the Lua Message, EnvelopeAddress and conn_meta objects.
-- Arguments: py (the Python functions of kumoq.lua.message.python_api, each
-- taking a handle first) and M (kumoq's private table); sets M.wrap and
-- M.new_address. Loads kumoq/mime (mime.lua) last, for msg:parse_mime() and
-- the address headers.
--
-- A Message or conn_meta object is an empty table with a metatable; its
-- handle is kept in a private weak table, so the policy can neither read nor
-- forge it. Strings are checked for valid UTF-8 before they reach Python.
--
-- Loaded by kumoq.lua.runtime as the chunk '=kumoq/message'. Formatted with
-- stylua and KumoMTA's stylua.toml.

local py, M = ...
local ERR = M.ERR
local setmetatable, type, error, select, tostring, pairs =
  setmetatable, type, error, select, tostring, pairs
local byte, gsub, char = string.byte, string.gsub, string.char
local utf8len, utf8char, unpack = utf8.len, utf8.char, table.unpack

local MH = setmetatable({}, { __mode = 'k' }) -- Message object -> handle
local CH = setmetatable({}, { __mode = 'k' }) -- conn_meta object -> handle

local function readonly(_, k)
  error(
    'cannot set field '
      .. tostring(k)
      .. ': this object has methods, not fields',
    2
  )
end
local function bad_utf8(name)
  error(name .. ': string argument is not valid UTF-8', 3)
end
local function not_object(name, what)
  error(
    name
      .. ': expected a '
      .. what
      .. ' object (call it as obj:'
      .. name
      .. '(...))',
    3
  )
end

local ADDR = { __metatable = 'EnvelopeAddress' }
function ADDR.__tostring(a)
  return a.email
end
function ADDR.__eq(a, b)
  return a.email == b.email
end
local function new_address(user, domain)
  local email = ''
  if user ~= '' or domain ~= '' then
    email = user .. '@' .. domain
  end
  return setmetatable({ user = user, domain = domain, email = email }, ADDR)
end
local function address_text(v)
  if type(v) == 'table' then
    v = v.email
  end
  if type(v) == 'string' and utf8len(v) == nil then
    bad_utf8 'address'
  end
  return v
end

local MSG = {}
local MSG_MT =
  { __index = MSG, __newindex = readonly, __metatable = 'Message' }
function MSG_MT.__tostring(m)
  local h = MH[m]
  local id = h and py.id(h)
  if id == nil or id == ERR then
    return 'Message'
  end
  return 'Message(' .. id .. ')'
end
local function new_message(h)
  local m = setmetatable({}, MSG_MT)
  MH[m] = h
  return m
end

local function method0(name)
  local f = py[name]
  MSG[name] = function(self)
    local h = MH[self]
    if h == nil then
      not_object(name, 'Message')
    end
    local r, e = f(h)
    if r == ERR then
      error(e, 2)
    end
    return r
  end
end
local function method1(name)
  local f = py[name]
  MSG[name] = function(self, a)
    local h = MH[self]
    if h == nil then
      not_object(name, 'Message')
    end
    if type(a) == 'string' and utf8len(a) == nil then
      bad_utf8(name)
    end
    local r, e = f(h, a)
    if r == ERR then
      error(e, 2)
    end
    return r
  end
end
local function method2(name)
  local f = py[name]
  MSG[name] = function(self, a, b)
    local h = MH[self]
    if h == nil then
      not_object(name, 'Message')
    end
    if type(a) == 'string' and utf8len(a) == nil then
      bad_utf8(name)
    end
    if type(b) == 'string' and utf8len(b) == nil then
      bad_utf8(name)
    end
    if type(b) == 'table' and M.plain ~= nil then
      b = M.plain(b) -- set_meta of a memoized view or domain map: copy it plain
    end
    local r, e = f(h, a, b)
    if r == ERR then
      error(e, 2)
    end
    return r
  end
end
local function method3(name)
  local f = py[name]
  MSG[name] = function(self, a, b, c)
    local h = MH[self]
    if h == nil then
      not_object(name, 'Message')
    end
    if type(a) == 'string' and utf8len(a) == nil then
      bad_utf8(name)
    end
    if type(b) == 'string' and utf8len(b) == nil then
      bad_utf8(name)
    end
    local r, e = f(h, a, b, c)
    if r == ERR then
      error(e, 2)
    end
    return r
  end
end

for _, name in ipairs {
  'id',
  'get_data',
  'queue_name',
  'num_attempts',
  'increment_num_attempts',
} do
  method0(name)
end
for _, name in ipairs {
  'get_meta',
  'get_first_named_header_value',
  'remove_all_named_headers',
  'import_x_headers',
  'remove_x_headers',
  'set_scheduling',
  'set_due',
} do
  method1(name)
end
for _, name in ipairs { 'set_meta', 'import_scheduling_header' } do
  method2(name)
end
for _, name in ipairs { 'append_header', 'prepend_header' } do
  method3(name)
end

-- The content methods (kumoq.lua.message_content). Table arguments are
-- copied plain first (M.plain, set by kumo.lua: a memoized view or a domain
-- map reads as an empty table from Python otherwise).
local function methodn(name, n)
  local f = py[name]
  MSG[name] = function(self, ...)
    local h = MH[self]
    if h == nil then
      not_object(name, 'Message')
    end
    local args = { ... }
    for i = 1, n do
      local v = args[i]
      if type(v) == 'string' and utf8len(v) == nil then
        bad_utf8(name)
      elseif type(v) == 'table' and M.plain ~= nil then
        args[i] = M.plain(v)
      end
    end
    local r, e = f(h, unpack(args, 1, n))
    if r == ERR then
      error(e, 2)
    end
    return r
  end
end
for name, n in pairs {
  parse_rfc3464 = 0,
  save = 0,
  shrink = 0,
  shrink_data = 0,
  import_headers = 1,
  append_text_plain = 1,
  append_text_html = 1,
  set_force_sync = 1,
  add_authentication_results = 2,
  check_fix_conformance = 3,
} do
  methodn(name, n)
end
-- msg:dkim_sign(signer): the signer is an opaque kumo.dkim.* object, passed
-- to Python by its handle (kumoq.lua.dkim_api).
local py_dkim_sign = py.dkim_sign
function MSG:dkim_sign(signer)
  local h = MH[self]
  if h == nil then
    not_object('dkim_sign', 'Message')
  end
  local r, e = py_dkim_sign(h, M.OPAQUE[signer] or false)
  if r == ERR then
    error(e, 2)
  end
end
-- msg:dkim_verify(), msg:arc_verify() and msg:arc_seal() wait for DNS:
-- kumo.lua defines them, on M.MSG and M.MH.
M.MSG, M.MH = MSG, MH

local LATIN1 = {}
for b = 128, 255 do
  LATIN1[char(b)] = utf8char(b)
end
local py_set_data = py.set_data
function MSG:set_data(s)
  local h = MH[self]
  if h == nil then
    not_object('set_data', 'Message')
  end
  if type(s) ~= 'string' then
    error('set_data: expected a string, got ' .. type(s), 2)
  end
  local r, e
  if utf8len(s) ~= nil then
    r, e = py_set_data(h, s, false)
  else
    r, e = py_set_data(h, gsub(s, '[\128-\255]', LATIN1), true)
  end
  if r == ERR then
    error(e, 2)
  end
end

local py_sender = py.sender
function MSG:sender()
  local h = MH[self]
  if h == nil then
    not_object('sender', 'Message')
  end
  local u, d = py_sender(h)
  if u == ERR then
    error(d, 2)
  end
  return new_address(u, d)
end

local py_recipients = py.recipients
local function recipients(self, name)
  local h = MH[self]
  if h == nil then
    not_object(name, 'Message')
  end
  local t = { py_recipients(h) }
  if t[1] == ERR then
    error(t[2], 3)
  end
  local out = {}
  for i = 1, #t, 2 do
    out[#out + 1] = new_address(t[i], t[i + 1])
  end
  return out
end
function MSG:recipient_list()
  return (recipients(self, 'recipient_list'))
end
function MSG:recipient()
  local list = recipients(self, 'recipient')
  if #list == 1 then
    return list[1]
  end
  if #list == 0 then
    return nil
  end
  return list
end

local py_set_sender, py_set_recipient = py.set_sender, py.set_recipient
function MSG:set_sender(v)
  local h = MH[self]
  if h == nil then
    not_object('set_sender', 'Message')
  end
  local r, e = py_set_sender(h, address_text(v))
  if r == ERR then
    error(e, 2)
  end
end
function MSG:set_recipient(v)
  local h = MH[self]
  if h == nil then
    not_object('set_recipient', 'Message')
  end
  local r, e
  if type(v) == 'table' and v.email == nil then
    local n, emails = #v, {}
    for i = 1, n do
      emails[i] = address_text(v[i])
    end
    r, e = py_set_recipient(h, unpack(emails, 1, n))
  else
    r, e = py_set_recipient(h, address_text(v))
  end
  if r == ERR then
    error(e, 2)
  end
end

local function listing(name, pairs_of_two)
  local f = py[name]
  MSG[name] = function(self, a)
    local h = MH[self]
    if h == nil then
      not_object(name, 'Message')
    end
    if type(a) == 'string' and utf8len(a) == nil then
      bad_utf8(name)
    end
    local t = { f(h, a) }
    if t[1] == ERR then
      error(t[2], 2)
    end
    if not pairs_of_two then
      return t
    end
    local out = {}
    for i = 1, #t, 2 do
      out[#out + 1] = { t[i], t[i + 1] }
    end
    return out
  end
end
listing('get_all_named_header_values', false)
listing('get_all_headers', true)

local CONN = {}
local CONN_MT =
  { __index = CONN, __newindex = readonly, __metatable = 'ConnectionMeta' }
function CONN_MT.__tostring()
  return 'ConnectionMeta'
end
local function new_conn(h)
  local c = setmetatable({}, CONN_MT)
  CH[c] = h
  return c
end
local py_conn_get, py_conn_set = py.conn_get_meta, py.conn_set_meta
function CONN:get_meta(key)
  local h = CH[self]
  if h == nil then
    not_object('get_meta', 'conn_meta')
  end
  if type(key) == 'string' and utf8len(key) == nil then
    bad_utf8 'get_meta'
  end
  local r, e = py_conn_get(h, key)
  if r == ERR then
    error(e, 2)
  end
  return r
end
function CONN:set_meta(key, value)
  local h = CH[self]
  if h == nil then
    not_object('set_meta', 'conn_meta')
  end
  if type(key) == 'string' and utf8len(key) == nil then
    bad_utf8 'set_meta'
  end
  if type(value) == 'string' and utf8len(value) == nil then
    bad_utf8 'set_meta'
  end
  local r, e = py_conn_set(h, key, value)
  if r == ERR then
    error(e, 2)
  end
end

-- Turn handles into objects for an event call; one shape letter per object
-- (see PolicyRuntime.invoke).
local function wrap(shape, i, ...)
  local c = byte(shape, i)
  if c == nil then
    return
  end
  if c == 109 then
    return new_message((...)), wrap(shape, i + 1, select(2, ...))
  end
  if c == 99 then
    return new_conn((...)), wrap(shape, i + 1, select(2, ...))
  end
  if c == 97 then
    local u, d = ...
    return new_address(u, d), wrap(shape, i + 1, select(3, ...))
  end
  return (...), wrap(shape, i + 1, select(2, ...))
end
M.wrap = wrap
M.new_address = new_address

-- kumo.make_message(sender, recipient, body) (kumoq/kumo_process sets it):
-- a Message of the policy's own, in memory only. Its handle lives as long
-- as the object: a collected one is released at the next call (no Python
-- call in __gc: finalizers also run inside lua_close).
local MADE_MT = {}
for k, v in pairs(MSG_MT) do
  MADE_MT[k] = v
end
local made_dead = {}
function MADE_MT.__gc(m)
  local h = MH[m]
  if h ~= nil then
    made_dead[#made_dead + 1] = h
  end
end
local py_make, py_release = py.make_message, py.release_messages
function M.make_message(sender, recipient, body)
  if #made_dead > 0 then
    local dead = made_dead
    made_dead = {}
    py_release(unpack(dead))
  end
  if type(body) ~= 'string' then
    error('make_message: body must be a string, got ' .. type(body), 2)
  end
  sender, recipient = address_text(sender), address_text(recipient)
  local h, e
  if utf8len(body) ~= nil then
    h, e = py_make(sender, recipient, body, false)
  else
    h, e = py_make(sender, recipient, gsub(body, '[\128-\255]', LATIN1), true)
  end
  if h == ERR then
    error(e, 2)
  end
  local m = setmetatable({}, MADE_MT)
  MH[m] = h
  return m
end

-- msg:parse_mime(), its objects and the address headers: kumoq/mime.
local mime_source, mime_name = py.mime_chunk()
M.load(mime_source, mime_name, 't')(py, M, MSG, MH)
