-- kumoq/kumo_cache: kumo.memoize, kumo.domain_map.new, and the copy-on-write
-- views both hand out. Arguments: py (the Python functions), M (kumoq's
-- private table) and kumo. Sets M.view, M.plain and M.VIEWS.
--
-- Views. KumoMTA keeps a memoized result, and each value of a domain map, as
-- data outside Lua and hands out a fresh read-mostly copy on every call, so
-- what a caller changes in it never reaches the cache. Here the cached value
-- stays a Lua table and the caller gets a view of it: a table with no fields
-- of its own whose metamethods read the cached table (table values become
-- views in turn, made once per view) and keep writes in the view's own
-- overlay. pairs, ipairs, # and indexing see the cached fields merged with
-- the overlay; next and rawget see an empty table. A field read through a
-- view is the raw field (a metatable of the cached table is not consulted,
-- as KumoMTA strips it), except that a view of a domain map looks keys up
-- with the map's wildcard rules. A table whose metatable is protected (a
-- kumoq object: a Message, a regex, a make_* result) is handed out as it is.
--
-- M.plain(v) makes a plain deep copy of any views and domain maps inside v,
-- so that Python, which reads tables raw, sees their fields; the kumo
-- functions that hand tables to Python call it.
--
-- Loaded by kumoq/kumo (kumo.lua) as the chunk '=kumoq/kumo_cache'.
-- Formatted with stylua and KumoMTA's stylua.toml.

local py, M, kumo = ...
local ERR = M.ERR
local setmetatable, getmetatable, type, error, tostring, pairs, next =
  setmetatable, getmetatable, type, error, tostring, pairs, next
local rawget, rawlen, select, format, sort, concat =
  rawget, rawlen, select, string.format, table.sort, table.concat
local pack, unpack, mtype = table.pack, table.unpack, math.type

local VIEWS = setmetatable({}, { __mode = 'k' }) -- view -> state
local DMAPS = setmetatable({}, { __mode = 'k' }) -- domain map -> trie
local TOMB = {} -- an overlay entry for a field set to nil
M.VIEWS = VIEWS
local made = 0 -- views and domain maps made so far: M.plain's fast path

local view_mt = { __metatable = false }

-- How a table is handed out: 'raw' (viewed, raw fields), 'indexed' (viewed
-- through its own indexing: a view or a domain map) or nil (as it is).
local function kind_of(t)
  if VIEWS[t] or DMAPS[t] then
    return 'indexed'
  end
  local mt = getmetatable(t)
  if mt == nil or type(mt) == 'table' then
    return 'raw'
  end
  return nil
end

-- A view of t (t itself when it is not a table or is a protected object);
-- fresh: t comes from a domain map lookup, which makes a new view per read.
local function view(t, fresh)
  if type(t) ~= 'table' then
    return t
  end
  if fresh and VIEWS[t] then
    return t
  end
  local kind = kind_of(t)
  if kind == nil then
    return t
  end
  local v = setmetatable({}, view_mt)
  VIEWS[v] = { base = t, kind = kind }
  made = made + 1
  return v
end
M.view = view

function view_mt.__index(v, k)
  local s = VIEWS[v]
  local over = s.over
  if over ~= nil then
    local o = over[k]
    if o ~= nil then
      if o == TOMB then
        return nil
      end
      return o
    end
  end
  local kids = s.kids
  local kid = kids and kids[k]
  if kid ~= nil then
    return kid
  end
  local value
  if s.kind == 'raw' then
    value = rawget(s.base, k)
  else
    value = s.base[k]
  end
  if type(value) ~= 'table' then
    return value
  end
  kid = view(value, DMAPS[s.base] ~= nil)
  if kids == nil then
    kids = {}
    s.kids = kids
  end
  kids[k] = kid
  return kid
end

function view_mt.__newindex(v, k, value)
  if k == nil then
    error('index is nil', 2)
  end
  local s = VIEWS[v]
  if DMAPS[s.base] and not s.own then
    s.base = M.copy_domain_map(s.base)
    s.own, s.kids = true, nil
  end
  if s.own then
    s.base[k] = value
    s.kids = nil -- a wildcard may change what any name finds
    return
  end
  local over = s.over
  if over == nil then
    over = {}
    s.over = over
  end
  if value == nil then
    value = TOMB
  end
  over[k] = value
  if s.kids then
    s.kids[k] = nil
  end
end

-- The keys of a view, in a snapshot taken when pairs starts.
local function keys_of(s)
  local out, n, seen = {}, 0, {}
  local over = s.over
  if s.kind == 'raw' then
    for k in next, s.base do
      if over == nil or over[k] == nil then
        n = n + 1
        out[n], seen[k] = k, true
      end
    end
  else
    for k in pairs(s.base) do
      if over == nil or over[k] == nil then
        n = n + 1
        out[n], seen[k] = k, true
      end
    end
  end
  if over ~= nil then
    for k, o in next, over do
      if o ~= TOMB and not seen[k] then
        n = n + 1
        out[n] = k
      end
    end
  end
  return out, n
end

function view_mt.__pairs(v)
  local keys, n = keys_of(VIEWS[v])
  local i = 0
  return function()
    while i < n do
      i = i + 1
      local k = keys[i]
      local value = v[k]
      if value ~= nil then
        return k, value
      end
    end
    return nil
  end,
    v,
    nil
end

function view_mt.__len(v)
  local s = VIEWS[v]
  local base = s.base
  local n = s.kind == 'raw' and rawlen(base) or #base
  if s.over == nil and not s.own then
    return n
  end
  while v[n + 1] ~= nil do
    n = n + 1
  end
  while n > 0 and v[n] == nil do
    n = n - 1
  end
  return n
end

-- A plain deep copy of v wherever it holds a view or domain map (v itself
-- when it holds none); protected objects are kept as they are.
local function plain(v, depth)
  if type(v) ~= 'table' or made == 0 then
    return v
  end
  depth = depth or 0
  if depth > 64 then
    error('table nesting is too deep (a cycle?)', 0)
  end
  local special = VIEWS[v] or DMAPS[v]
  local kind = special and 'indexed' or kind_of(v)
  if kind == nil then
    return v
  end
  if special then
    local out = {}
    for k, value in pairs(v) do
      out[k] = plain(value, depth + 1)
    end
    return out
  end
  local out -- a shallow copy, made at the first field that needs one
  for k, value in next, v do
    local p = type(value) == 'table' and plain(value, depth + 1) or value
    if p ~= value then
      if out == nil then
        out = {}
        for k2, v2 in next, v do
          out[k2] = v2
        end
      end
      out[k] = p
    end
  end
  return out or v
end
M.plain = plain

-- Domain maps: a trie of labels from the right, KumoMTA's algorithm. A
-- lookup walks the name's labels; where a label has no node it takes the
-- '*' node of that level, if any. An exact node wins over a wildcard, even
-- one with no value (a node made on the way to a longer name), as in
-- KumoMTA: with '*.example.com' and 'a.b.example.com' set, 'b.example.com'
-- is nil.
local function labels(name)
  local out, n = {}, 0
  for label in (name .. '.'):gmatch '([^.]*)%.' do
    n = n + 1
    out[n] = label
  end
  return out, n
end

local function trie_set(top, name, value)
  local ls, n = labels(name)
  local level = top
  for i = n, 1, -1 do
    local node = level[ls[i]]
    if node == nil then
      node = { kids = {} }
      level[ls[i]] = node
    end
    if i == 1 then
      node.value = value
      return
    end
    level = node.kids
  end
end

local function trie_get(top, name)
  local ls, n = labels(name)
  local level = top
  for i = n, 1, -1 do
    local node = level[ls[i]]
    if node == nil then
      local wild = level['*']
      return wild and wild.value
    end
    if i == 1 then
      return node.value
    end
    level = node.kids
  end
  return nil
end

local function trie_walk(level, suffix, out)
  for label, node in next, level do
    local name = suffix and (label .. '.' .. suffix) or label
    if node.value ~= nil then
      out[#out + 1] = name
      out[name] = node.value
    end
    trie_walk(node.kids, name, out)
  end
  return out
end

local function domain_key(k)
  if type(k) ~= 'string' and type(k) ~= 'number' then
    error('domain map keys are domain names (strings), got ' .. type(k), 3)
  end
  return tostring(k)
end

local dmap_mt = { __metatable = 'DomainMap' }
function dmap_mt.__index(d, k)
  return view(trie_get(DMAPS[d], domain_key(k)), false)
end
function dmap_mt.__newindex(d, k, value)
  trie_set(DMAPS[d], domain_key(k), value)
end
function dmap_mt.__pairs(d)
  local entries = trie_walk(DMAPS[d], nil, {})
  sort(entries)
  local i = 0
  return function()
    i = i + 1
    local name = entries[i]
    if name ~= nil then
      return name, view(entries[name], false)
    end
  end,
    d,
    nil
end
function dmap_mt.__tostring()
  return 'DomainMap'
end

local function new_domain_map()
  local d = setmetatable({}, dmap_mt)
  DMAPS[d] = {}
  made = made + 1
  return d
end

function M.copy_domain_map(d)
  local copy = new_domain_map()
  local entries = trie_walk(DMAPS[d], nil, {})
  for i = 1, #entries do
    trie_set(DMAPS[copy], entries[i], entries[entries[i]])
  end
  return copy
end

kumo.domain_map = {}
function kumo.domain_map.new(init)
  if init ~= nil and type(init) ~= 'table' then
    error(
      'kumo.domain_map.new: expected a table of domain -> value, got '
        .. type(init),
      2
    )
  end
  local d = new_domain_map()
  if init ~= nil then
    for k, value in pairs(init) do
      if type(k) ~= 'string' then
        error(
          'kumo.domain_map.new: keys are domain names (strings), got '
            .. type(k),
          2
        )
      end
      trie_set(DMAPS[d], k, value)
    end
  end
  return d
end

-- kumo.memoize(fn, {name=, ttl=, capacity=, ...}): caches keyed by name, in
-- this runtime. A cache holds up to capacity entries, each for ttl seconds;
-- a hit moves its entry to the front of a list, and an insert into a full
-- cache drops the entry at the back (least recently used). The key is the
-- arguments, serialized with their types (1 and 1.0 differ; tables by
-- content, keys sorted). Every call returns views of the cached results.
local py_params, py_time = py.x_memoize_params, py.x_time
local CACHES = {}

local function keyof(buf, v, depth)
  local t = type(v)
  if t == 'string' then
    buf[#buf + 1] = format('%q', v)
  elseif t == 'number' then
    buf[#buf + 1] = mtype(v) == 'integer' and format('i%d', v)
      or format('f%a', v)
  elseif t == 'boolean' or t == 'nil' then
    buf[#buf + 1] = tostring(v)
  elseif t == 'table' and (VIEWS[v] or kind_of(v)) then
    if depth > 32 then
      error('memoize: an argument nests too deep to be a cache key', 0)
    end
    local parts = {}
    for k, value in pairs(v) do
      local kb, vb = {}, {}
      keyof(kb, k, depth + 1)
      keyof(vb, value, depth + 1)
      parts[#parts + 1] = concat(kb) .. '=' .. concat(vb)
    end
    sort(parts)
    buf[#buf + 1] = '{' .. concat(parts, ',') .. '}'
  else
    local what = t == 'table' and tostring(getmetatable(v)) or t
    error(
      'memoize: a ' .. what .. ' value cannot be part of a cache key',
      0
    )
  end
end

local function unlink(c, e)
  if e.prev then
    e.prev.next = e.next
  else
    c.head = e.next
  end
  if e.next then
    e.next.prev = e.prev
  else
    c.tail = e.prev
  end
  e.prev, e.next = nil, nil
end

local function push_front(c, e)
  e.next = c.head
  if c.head then
    c.head.prev = e
  end
  c.head = e
  if c.tail == nil then
    c.tail = e
  end
end

local function views(res, i, n)
  if i <= n then
    return view(res[i], false), views(res, i + 1, n)
  end
end

local function lookup(c, fn, ...)
  local buf = {}
  for i = 1, select('#', ...) do
    keyof(buf, (select(i, ...)), 0)
  end
  local key = concat(buf, ',')
  local now = py_time 'monotonic'
  local e = c.map[key]
  if e ~= nil then
    unlink(c, e)
    if e.expires > now then
      push_front(c, e)
      return views(e.res, 1, e.res.n)
    end
    c.map[key], c.size = nil, c.size - 1
  end
  local res = pack(fn(...))
  if c.capacity > 0 then
    if c.size >= c.capacity then
      local old = c.tail
      unlink(c, old)
      c.map[old.key], c.size = nil, c.size - 1
    end
    e = { key = key, res = res, expires = now + c.ttl }
    c.map[key], c.size = e, c.size + 1
    push_front(c, e)
  end
  return views(res, 1, res.n)
end

function kumo.memoize(fn, params)
  if type(fn) ~= 'function' then
    error('memoize: expected a function, got ' .. type(fn), 2)
  end
  if type(params) ~= 'table' then
    error('memoize: expected a parameter table, got ' .. type(params), 2)
  end
  local name, ttl, capacity = py_params(plain(params))
  if name == ERR then
    error(ttl, 2)
  end
  local sig = format('%s|%d', tostring(ttl), capacity)
  local c = CACHES[name]
  if c == nil or c.sig ~= sig then
    c = { map = {}, size = 0, ttl = ttl, capacity = capacity, sig = sig }
    CACHES[name] = c
  end
  -- as in KumoMTA, each call finds the cache by its name: a later memoize
  -- with the same name and other parameters replaces it for this one too
  return function(...)
    return lookup(CACHES[name], fn, ...)
  end
end
