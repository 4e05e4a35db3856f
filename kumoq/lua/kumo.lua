-- kumoq/kumo: the kumo module the policy sees (kumo.on, reject, disconnect,
-- log_*, the declarations, make_* and kumo.dns), then KumoMTA's utility
-- modules from the chunks it loads last (kumo_cache, kumo_data, kumo_time,
-- kumo_process, kumo_shaping, kumo_http: memoize, domain_map, serde, json_*,
-- string, regex, time, spawn_task, shaping, http...). Arguments: py (the
-- Python functions of kumoq.lua.kumo_api.python_api) and M (kumoq's private
-- table); sets the global kumo and package.loaded.kumo (and
-- package.loaded['kumo.serde'] and the like). Reading a field kumo or one
-- of its modules does not have is an error ("kumo.foo is not available in
-- kumoq"), at the policy's line.
--
-- Loaded by kumoq.lua.runtime as the chunk '=kumoq/kumo', last. Formatted
-- with stylua and KumoMTA's stylua.toml.

local py, M = ...
local ERR, OPAQUE, REJECT = M.ERR, M.OPAQUE, M.REJECT
local setmetatable, type, error, select, tostring, pcall =
  setmetatable, type, error, select, tostring, pcall
local concat, gsub, utf8len, tointeger =
  table.concat, string.gsub, utf8.len, math.tointeger
local unpack = table.unpack

local kumo = {}
kumo.on = M.on

local function printable(s)
  if utf8len(s) == nil then
    s = gsub(s, '[\128-\255]', '?')
  end
  return s
end

local function raise_reject(fname, code, message, how)
  local c = type(code) == 'number' and tointeger(code)
  if not c then
    error(fname .. ': code must be an integer, got ' .. tostring(code), 3)
  end
  if c < 400 or c > 599 then
    error(
      fname .. ': code must be a 4xx or 5xx reply code, got ' .. tostring(c),
      3
    )
  end
  if type(message) ~= 'string' then
    error(fname .. ': message must be a string, got ' .. type(message), 3)
  end
  error(
    setmetatable(
      { code = c, message = printable(message), how = how },
      REJECT
    ),
    0
  )
end
function kumo.reject(code, message)
  raise_reject('reject', code, message, 'If421')
end
function kumo.disconnect(code, message, how)
  if how == nil then
    how = 'ForceDisconnect'
  end
  if
    how ~= 'ForceDisconnect'
    and how ~= 'If421'
    and how ~= 'FollowWith421'
  then
    error(
      "disconnect: expected one of 'If421', 'FollowWith421' or "
        .. "'ForceDisconnect', but got "
        .. tostring(how),
      2
    )
  end
  raise_reject('disconnect', code, message, how)
end

-- kumo.json_encode, json_encode_pretty and json_parse: see kumo_data.lua.

local py_log = py.kumo_log
local function logger(level)
  return function(...)
    local parts = {}
    for i = 1, select('#', ...) do
      parts[i] = tostring((select(i, ...)))
    end
    py_log(level, printable(concat(parts, ' ')))
  end
end
kumo.log_debug = logger(10)
kumo.log_info = logger(20)
kumo.log_warn = logger(30)
kumo.log_error = logger(40)

-- The declaration and make_* functions are often tail-called
-- (`return kumo.make_queue_config {...}`), and a tail call into a Lua
-- function drops the caller's frame, with it the line an error must name. So
-- they are callable tables whose __call is a C function: a coroutine.wrap
-- function, which keeps the caller's frame and prefixes a string error with
-- the caller's "file:line:". A coroutine that raised is dead, so it is
-- replaced after each error.
local pack, yield, cowrap = table.pack, coroutine.yield, coroutine.wrap
local function c_callable(name, fn)
  local mt = { __metatable = false }
  function mt.__tostring()
    return 'function: kumo.' .. name
  end
  function mt.__index(_, k)
    error(
      'kumo.' .. name .. ' is a function; it has no field ' .. tostring(k),
      2
    )
  end
  mt.__newindex = mt.__index
  local function fresh()
    return cowrap(function(...)
      local args = pack(select(2, ...))
      while true do
        local res = pack(pcall(fn, unpack(args, 1, args.n)))
        if not res[1] then
          mt.__call = fresh()
          error(res[2], 0)
        end
        args = pack(select(2, yield(unpack(res, 2, res.n))))
      end
    end)
  end
  mt.__call = fresh()
  return setmetatable({}, mt)
end

local py_declare, py_make, py_release =
  py.kumo_declare, py.kumo_make, py.kumo_release
local function check_table(kind, params)
  if type(params) ~= 'table' then
    error(kind .. ': expected a table, got ' .. type(params), 0)
  end
end
local function declaration(kind)
  return c_callable(kind, function(params)
    check_table(kind, params)
    local r, e = py_declare(kind, M.plain(params))
    if r == ERR then
      error(e, 0)
    end
  end)
end
local function maker(kind)
  local mt = { __metatable = kind }
  function mt.__tostring()
    return kind
  end
  function mt.__index(_, k)
    error(
      kind .. ': the result is opaque; it has no field ' .. tostring(k),
      2
    )
  end
  function mt.__newindex()
    error(kind .. ': the result is read-only', 2)
  end
  -- no Python call in __gc: finalizers also run inside lua_close
  function mt.__gc(t)
    local h = OPAQUE[t]
    if h ~= nil then
      local dead = M.dead
      dead[#dead + 1] = h
    end
  end
  return c_callable(kind, function(params)
    check_table(kind, params)
    local dead = M.dead
    if #dead > 0 then
      M.dead = {}
      py_release(unpack(dead))
    end
    local h, e = py_make(kind, M.plain(params))
    if h == ERR then
      error(e, 0)
    end
    local t = setmetatable({}, mt)
    OPAQUE[t] = h
    return t
  end)
end
for _, kind in ipairs(M.declarations) do
  kumo[kind] = declaration(kind)
end

-- kumo.bump_config_epoch(): reload the policy and refresh every queue and
-- egress config, as SIGHUP does (kumoq runs the reload after this call).
local py_bump = py.kumo_bump_config_epoch
kumo.bump_config_epoch = function()
  local r, e = py_bump()
  if r == ERR then
    error(e, 2)
  end
end

-- kumo.validation_failed(): mark the policy as failing validation (KumoMTA's
-- validate_config helpers call it after printing what is wrong); the handler
-- goes on. kumoq remembers where it was called and reports that file:line.
local py_validation_failed = py.kumo_validation_failed
kumo.validation_failed = function()
  local r, e = py_validation_failed(M.where(2))
  if r == ERR then
    error(e, 2)
  end
end

-- kumo.dns.configure_test_resolver(zone_text | {zone_text, ...}): answer DNS
-- from zone text instead of the network (init only), so tests and staging
-- route domains to 127.0.0.x.
kumo.dns = {}
local dns_declare = declaration 'configure_test_resolver'
kumo.dns.configure_test_resolver = function(zones)
  if type(zones) ~= 'string' and type(zones) ~= 'table' then
    error(
      'configure_test_resolver: expected zone text or a list of zone texts, got '
        .. type(zones),
      2
    )
  end
  dns_declare { zones = zones }
end

-- kumo.dns.lookup_mx(domain): the domain's MX as KumoMTA's MailExchanger
-- table. Waits for DNS by yielding to the event coroutine kumoq runs every
-- handler in (see kumoq/lua/waits.py).
local running, isyieldable, yield =
  coroutine.running, coroutine.isyieldable, coroutine.yield
local PENDING, EVENT_COROUTINES = M.PENDING, M.EVENT_COROUTINES
kumo.dns.lookup_mx = function(domain)
  if type(domain) ~= 'string' then
    error(
      'kumo.dns.lookup_mx: expected a domain name, got ' .. type(domain),
      2
    )
  end
  if not EVENT_COROUTINES[running()] or not isyieldable() then
    error(
      'kumo.dns.lookup_mx: cannot wait for DNS here; call it from the handler itself, '
        .. "not from a coroutine, metamethod or callback of the policy's own",
      2
    )
  end
  local ok, res = yield(PENDING, 'lookup_mx', domain)
  if not ok then
    error(res, 2)
  end
  return res
end

-- kumo.dns.lookup_addr(name, resolver, strategy), lookup_ptr(ip, resolver)
-- and lookup_txt(name, resolver) wait the same way (kumoq.lua.dns_api
-- answers); reverse_ip(ip) and ptr_host(ip) are string work only.
local function dns_lookup(fname)
  return function(name, resolver, strategy)
    if type(name) ~= 'string' then
      error(
        'kumo.dns.' .. fname .. ': expected a string, got ' .. type(name),
        2
      )
    end
    if not EVENT_COROUTINES[running()] or not isyieldable() then
      error(
        'kumo.dns.'
          .. fname
          .. ': cannot wait for DNS here; call it from the handler itself, '
          .. "not from a coroutine, metamethod or callback of the policy's own",
        2
      )
    end
    local ok, res = yield(
      PENDING,
      'dns.' .. fname,
      { name = name, resolver = resolver, strategy = strategy }
    )
    if not ok then
      error(res, 2)
    end
    return res
  end
end
for _, fname in ipairs { 'lookup_addr', 'lookup_ptr', 'lookup_txt' } do
  kumo.dns[fname] = dns_lookup(fname)
end
for _, fname in ipairs { 'reverse_ip', 'ptr_host' } do
  local fn = py['kumo_dns_' .. fname]
  kumo.dns[fname] = function(ip)
    if type(ip) ~= 'string' then
      error('kumo.dns.' .. fname .. ': expected a string, got ' .. type(ip), 2)
    end
    local r, e = fn(ip)
    if r == ERR then
      error(e, 2)
    end
    return r
  end
end
for _, kind in ipairs(M.makers) do
  kumo[kind] = maker(kind)
end

-- kumo.dkim.rsa_sha256_signer{...} and kumo.dkim.ed25519_signer{...}: opaque
-- signers for msg:dkim_sign (message.lua; kumoq.lua.dkim_api builds them).
kumo.dkim = {}
for _, kind in ipairs { 'rsa_sha256_signer', 'ed25519_signer' } do
  kumo.dkim[kind] = maker(kind)
end

-- msg:dkim_verify(), msg:arc_verify() and msg:arc_seal(signer, server_id,
-- results) (kumoq.lua.dkim_verify_api), methods of message.lua's Message:
-- the key records are fetched first, by yielding the 'dkim.keys' op to the
-- event coroutine as kumo.dns.lookup_txt does, then handed to the Python
-- verifier with the message.
local MSG, MH, py_key_names = M.MSG, M.MH, py.dkim_key_names
local function not_message(name)
  error(
    name .. ': expected a Message object (call it as msg:' .. name .. '(...))',
    3
  )
end
local function fetch_keys(name, h, which, resolver)
  if resolver ~= nil then
    error(
      name
        .. ': no resolver named '
        .. tostring(resolver)
        .. ' (kumoq has no kumo.dns.define_resolver)',
      3
    )
  end
  local names, e = py_key_names(h, which)
  if names == ERR then
    error(name .. ': ' .. tostring(e), 3)
  end
  if #names == 0 then
    return {}
  end
  if not EVENT_COROUTINES[running()] or not isyieldable() then
    error(
      name
        .. ': cannot wait for DNS here; call it from the handler itself, '
        .. "not from a coroutine, metamethod or callback of the policy's own",
      3
    )
  end
  local ok, res = yield(PENDING, 'dkim.keys', names)
  if not ok then
    error(name .. ': ' .. gsub(tostring(res), '^kumo%.dkim%.keys: ', ''), 3)
  end
  return res
end
for _, name in ipairs { 'dkim_verify', 'arc_verify' } do
  local f = py[name]
  MSG[name] = function(self, resolver)
    local h = MH[self]
    if h == nil then
      not_message(name)
    end
    local which = name == 'dkim_verify' and 'dkim' or 'arc'
    local r, e = f(h, fetch_keys(name, h, which, resolver))
    if r == ERR then
      error(e, 2)
    end
    return r
  end
end
local py_arc_seal = py.arc_seal
function MSG:arc_seal(signer, server_id, results, resolver)
  local h = MH[self]
  if h == nil then
    not_message 'arc_seal'
  end
  if type(server_id) == 'string' and utf8len(server_id) == nil then
    error('arc_seal: string argument is not valid UTF-8', 2)
  end
  if type(results) == 'table' and M.plain ~= nil then
    results = M.plain(results)
  end
  local keys = fetch_keys('arc_seal', h, 'arc', resolver)
  local r, e = py_arc_seal(h, OPAQUE[signer] or false, server_id, results, keys)
  if r == ERR then
    error(e, 2)
  end
end

-- KumoMTA's utility modules, each a chunk of its own (kumoq.lua.chunks).
local EXTENSIONS =
  { 'cache', 'data', 'time', 'process', 'shaping', 'http', 'throttle' }
for _, name in ipairs(EXTENSIONS) do
  local src, chunkname = py.kumo_chunk(name)
  if src == ERR then
    error(chunkname, 0)
  end
  M.load(src, chunkname, 't')(py, M, kumo)
end

-- Strict modules: a field kumoq does not have is an error at the line that
-- reads it, not a nil that fails later (or never).
local function strict(t, prefix)
  return setmetatable(t, {
    __index = function(_, k)
      error(prefix .. tostring(k) .. ' is not available in kumoq', 2)
    end,
  })
end
for name, sub in pairs(kumo) do
  if type(sub) == 'table' and getmetatable(sub) == nil then
    strict(sub, 'kumo.' .. name .. '.')
    package.loaded['kumo.' .. name] = sub
  end
end
strict(kumo, 'kumo.')

M.kumo = kumo
_G.kumo = kumo
package.loaded.kumo = kumo
