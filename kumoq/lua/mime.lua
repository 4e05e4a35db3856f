-- kumoq/mime: msg:parse_mime() and its MimePart, HeaderMap and Header
-- objects; msg:get_address_header(), from_header() and to_header() and their
-- AddressHeader objects. Arguments: py (the Python functions of
-- kumoq.lua.message_mime and message_content), M (kumoq's private table),
-- MSG (the Message methods) and MH (Message object -> handle).
--
-- A MimePart is an empty table with a metatable; its (root, path) live in a
-- private weak table. The tree itself stays in Python; every object of one
-- tree refers to the same anchor table, and once no object refers to it the
-- tree is freed (see sweep).
--
-- Loaded by kumoq/message (message.lua) as the chunk '=kumoq/mime'.
-- Formatted with stylua and KumoMTA's stylua.toml.

local py, M, MSG, MH = ...
local ERR = M.ERR
local setmetatable, type, error, tostring, ipairs =
  setmetatable, type, error, tostring, ipairs
local utf8len, utf8char, gsub, char, find =
  utf8.len, utf8.char, string.gsub, string.char, string.find

local function readonly(_, k)
  error('cannot set field ' .. tostring(k) .. ' of this object', 2)
end
-- The error for a method called with a dot: obj.method(...).
local function not_object(name, what, level)
  error(
    name
      .. ': expected a '
      .. what
      .. ' object (call it as obj:'
      .. name
      .. '(...))',
    level + 1
  )
end
local function utf8_arg(name, v)
  if type(v) == 'string' and utf8len(v) == nil then
    error(name .. ': string argument is not valid UTF-8', 3)
  end
end
local function plain(v)
  local p = M.plain
  if p ~= nil and type(v) == 'table' then
    return p(v)
  end
  return v
end
-- Call a Python function from a method of the policy's object: an error is
-- raised at the policy's line (``level`` 2 when called from a method itself).
local function call(level, name, f, ...)
  local r, e = f(...)
  if r == ERR then
    error(name .. ': ' .. tostring(e), level + 1)
  end
  return r, e
end

-- AddressHeader and its list entries ----------------------------------------
local AJSON = setmetatable({}, { __mode = 'k' }) -- entry -> json text
local ENTRY = { __metatable = 'HeaderAddress', __newindex = readonly }
function ENTRY.__tostring(a)
  return AJSON[a]
end
local function entry(t)
  local json = t.json
  t.json = nil
  local e = setmetatable(t, ENTRY)
  AJSON[e] = json
  return e
end

local AH = setmetatable({}, { __mode = 'k' }) -- AddressHeader -> data
local AH_MT = { __metatable = 'AddressHeader', __newindex = readonly }
function AH_MT.__tostring(h)
  return AH[h].json
end
function AH_MT.__index(h, k)
  local d = AH[h]
  if k == 'list' then
    local out = {}
    for i, e in ipairs(d.list) do
      local t = { json = AJSON[e] }
      for _, f in ipairs { 'user', 'domain', 'email', 'name' } do
        t[f] = e[f]
      end
      out[i] = entry(t)
    end
    return out
  end
  if k == 'user' or k == 'domain' or k == 'email' or k == 'name' then
    if d.single == nil then
      error('addressheader.' .. k .. ': ' .. d.error, 2)
    end
    return d.single[k]
  end
  return nil
end

local py_address = py.get_address_header
local function get_address_header(self, method, header)
  local h = MH[self]
  if h == nil then
    not_object(method, 'Message', 3)
  end
  if type(header) ~= 'string' then
    error(method .. ': expected a header name, got ' .. type(header), 3)
  end
  utf8_arg(method, header)
  local d, e = py_address(h, header)
  if d == ERR then
    e = gsub(tostring(e), '^get_address_header: ', '')
    error(method .. ': ' .. e, 3)
  end
  if d == nil then
    return nil
  end
  local list = {}
  for i, t in ipairs(d.list) do
    list[i] = entry(t)
  end
  local single = d.single
  if single ~= nil then
    single.json = nil
  end
  local obj = setmetatable({}, AH_MT)
  AH[obj] = { list = list, single = single, error = d.error, json = d.json }
  return obj
end
function MSG:get_address_header(name)
  return get_address_header(self, 'get_address_header', name)
end
function MSG:from_header()
  return get_address_header(self, 'from_header', 'From')
end
function MSG:to_header()
  return get_address_header(self, 'to_header', 'To')
end

-- MimePart ------------------------------------------------------------------
local PART = setmetatable({}, { __mode = 'k' }) -- MimePart -> {anchor, path}
local HMAP = setmetatable({}, { __mode = 'k' }) -- HeaderMap -> {anchor, path}
local HDR = setmetatable({}, { __mode = 'k' }) -- Header -> {name, raw}
-- Which trees are still referred to: LIVE holds each tree's anchor weakly,
-- KNOWN every tree handed out. A tree whose anchor was collected is freed
-- in Python before the next one is made (no __gc: a finalizer calling
-- Python could run while the Lua state closes).
local LIVE = setmetatable({}, { __mode = 'v' })
local KNOWN = {}
local py_free, unpack, pairs = py.mime_free, table.unpack, pairs
local collectgarbage = M.collectgarbage
local function sweep()
  local dead = {}
  for root in pairs(KNOWN) do
    if LIVE[root] == nil then
      dead[#dead + 1] = root
      KNOWN[root] = nil
    end
  end
  if #dead > 0 then
    py_free(unpack(dead))
  end
end
-- Make a tree with f(...); when too many are alive, collect garbage and try
-- once more.
local function make_tree(f, ...)
  sweep()
  local r, e = f(...)
  if r == ERR and find(e, 'too many MimePart', 1, true) then
    collectgarbage 'collect'
    sweep()
    r, e = f(...)
  end
  return r, e
end

local PART_MT = { __metatable = 'MimePart' }
local METHODS = {}
local function new_part(anchor, path)
  local p = setmetatable({}, PART_MT)
  PART[p] = { anchor = anchor, path = path }
  return p
end
local function new_root(root)
  local anchor = { root = root }
  LIVE[root], KNOWN[root] = anchor, true
  return new_part(anchor, '')
end
local function state(p, name)
  local s = PART[p]
  if s == nil then
    not_object(name, 'MimePart', 3)
  end
  return s.anchor.root, s.path, s.anchor
end

local py_parse = py.mime_parse
function MSG:parse_mime()
  local h = MH[self]
  if h == nil then
    not_object('parse_mime', 'Message', 2)
  end
  local r, e = make_tree(py_parse, h)
  if r == ERR then
    error('parse_mime: ' .. tostring(e), 2)
  end
  return new_root(r)
end

local LATIN1 = {}
for b = 128, 255 do
  LATIN1[char(b)] = utf8char(b)
end
local function replace_body(p, name, body, content_type)
  local root, path = state(p, name)
  if type(body) ~= 'string' then
    error(name .. ': expected a string, got ' .. type(body), 3)
  end
  if content_type ~= nil and type(content_type) ~= 'string' then
    error(
      name .. ': content type must be a string, got ' .. type(content_type),
      3
    )
  end
  utf8_arg(name, content_type)
  local r, e
  if utf8len(body) ~= nil then
    r, e = py.mime_replace_body(root, path, body, false, content_type)
  else
    local latin1 = gsub(body, '[\128-\255]', LATIN1)
    r, e = py.mime_replace_body(root, path, latin1, true, content_type)
  end
  if r == ERR then
    error(name .. ': ' .. tostring(e), 3)
  end
end
function METHODS:replace_body(body, content_type)
  replace_body(self, 'replace_body', body, content_type)
end

function METHODS:get_simple_structure()
  local root, path, anchor = state(self, 'get_simple_structure')
  local s = call(2, 'get_simple_structure', py.mime_structure, root, path)
  local out = { attachments = {} }
  local parts = { 'text_part', 'html_part', 'amp_html_part', 'header_part' }
  for _, k in ipairs(parts) do
    if s[k] ~= nil then
      out[k] = new_part(anchor, s[k])
    end
  end
  for i, a in ipairs(s.attachments) do
    out.attachments[i] = {
      file_name = a.file_name,
      inline = a.inline,
      content_id = a.content_id,
      content_type = a.content_type,
      part = new_part(anchor, a.path),
    }
  end
  return out
end

function METHODS:rebuild()
  local root, path = state(self, 'rebuild')
  local r, e = make_tree(py.mime_rebuild, root, path)
  if r == ERR then
    error('rebuild: ' .. tostring(e), 2)
  end
  return new_root(r)
end

function METHODS:append_part(other)
  local root, path = state(self, 'append_part')
  local s = PART[other]
  if s == nil then
    error('append_part: expected a MimePart object, got ' .. type(other), 2)
  end
  local add = py.mime_append_part
  call(2, 'append_part', add, root, path, s.anchor.root, s.path)
end

local HMAP_MT = { __metatable = 'HeaderMap', __newindex = readonly }
function PART_MT.__index(p, k)
  local m = METHODS[k]
  if m ~= nil then
    return m
  end
  local root, path, anchor = state(p, tostring(k))
  if k == 'id' then
    return path
  end
  if k == 'body' then
    return (call(2, 'body', py.mime_body, root, path))
  end
  if k == 'headers' then
    local hm = setmetatable({}, HMAP_MT)
    HMAP[hm] = { anchor = anchor, path = path }
    return hm
  end
  if k == 'parts' then -- kumoq extension: the child parts, in order
    local n = call(2, 'parts', py.mime_child_count, root, path)
    local out = {}
    for i = 1, n do
      local id = path == '' and tostring(i - 1) or path .. '.' .. (i - 1)
      out[i] = new_part(anchor, id)
    end
    return out
  end
  return nil
end
function PART_MT.__newindex(p, k, v)
  if k ~= 'body' then
    error('cannot set field ' .. tostring(k) .. ' of a MimePart', 2)
  end
  replace_body(p, 'body', v, nil)
end
function PART_MT.__tostring(p)
  local root, path = state(p, 'tostring')
  return (call(3, 'tostring', py.mime_tostring, root, path))
end

-- HeaderMap and Header ------------------------------------------------------
local HDR_MT = { __metatable = 'Header', __newindex = readonly }
local HDR_KINDS = {
  unstructured = true,
  value = true,
  address_list = true,
  mailbox_list = true,
  mailbox = true,
  message_id = true,
  message_id_list = true,
  mime_params = true,
}
function HDR_MT.__index(h, k)
  local d = HDR[h]
  if k == 'name' then
    return d.name
  end
  if k == 'raw_value' then
    return d.raw
  end
  if k == 'authentication_results' then
    error('header.authentication_results is not available in kumoq yet', 2)
  end
  if HDR_KINDS[k] then
    if utf8len(d.raw) == nil then
      error('header.' .. k .. ': the value is not valid UTF-8', 2)
    end
    local r, e = py.mime_header_value(k, d.name, d.raw)
    if r == ERR then
      error('header.' .. k .. ': ' .. tostring(e), 2)
    end
    return r
  end
  return nil
end
function HDR_MT.__tostring(h)
  local d = HDR[h]
  return d.name .. ': ' .. d.raw
end
local function new_header(name, raw)
  local h = setmetatable({}, HDR_MT)
  HDR[h] = { name = name, raw = raw }
  return h
end

local HM = {}
HMAP_MT.__index = HM
local function hm_state(hm, name)
  local s = HMAP[hm]
  if s == nil then
    not_object(name, 'HeaderMap', 3)
  end
  return s.anchor.root, s.path
end
function HMAP_MT.__tostring(hm)
  local root, path = hm_state(hm, 'tostring')
  return (call(3, 'tostring', py.mime_headers, root, path))
end
local function adder(prepend)
  local name = prepend and 'prepend' or 'append'
  return function(hm, header, value)
    local root, path = hm_state(hm, name)
    utf8_arg(name, header)
    utf8_arg(name, value)
    call(2, name, py.mime_add_header, root, path, header, value, prepend)
  end
end
HM.append = adder(false)
HM.prepend = adder(true)
function HM:remove_all_named(header)
  local root, path = hm_state(self, 'remove_all_named')
  utf8_arg('remove_all_named', header)
  call(2, 'remove_all_named', py.mime_remove_all_named, root, path, header)
end
local function fields(hm, name, header)
  local root, path = hm_state(hm, name)
  utf8_arg(name, header)
  local t = { py.mime_fields(root, path, header) }
  if t[1] == ERR then
    error(name .. ': ' .. tostring(t[2]), 3)
  end
  return t
end
function HM:get_first_named(header)
  local t = fields(self, 'get_first_named', header)
  if t[1] == nil then
    return nil
  end
  return new_header(t[1], t[2])
end
function HM:iter(header)
  local t = fields(self, 'iter', header)
  local i = -1
  return function()
    i = i + 2
    if t[i] ~= nil then
      return new_header(t[i], t[i + 1])
    end
  end
end
for _, method in ipairs { py.mime_accessors() } do
  HM[method] = function(hm)
    local root, path = hm_state(hm, method)
    return (call(2, method, py.mime_get, root, path, method))
  end
  HM['set_' .. method] = function(hm, value)
    local root, path = hm_state(hm, 'set_' .. method)
    utf8_arg('set_' .. method, value)
    call(2, 'set_' .. method, py.mime_set, root, path, method, plain(value))
  end
end
