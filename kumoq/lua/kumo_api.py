"""The ``kumo`` module seen by the policy (reference §2.1, §2.9, §2.11 CORE helpers).

Defined in Lua (``LUA_SOURCE``) on top of a few Python functions (``python_api``):

- ``kumo.on`` (from the runtime), ``kumo.reject(code, msg)`` and
  ``kumo.disconnect(code, msg[, 'ForceDisconnect'|'If421'])``, which raise a Lua error whose
  value is a private reject table (never matched by text), turned into RejectError;
- ``kumo.json_encode``, ``kumo.json_encode_pretty``, ``kumo.json_parse`` (keys sorted, as
  serde_json's default map does; JSON ``null`` becomes nil);
- ``kumo.log_debug/log_info/log_warn/log_error(...)``: arguments ``tostring``-ed and joined
  with spaces, to the Python logger ``kumoq.policy``;
- declarations ``start_esmtp_listener``, ``start_http_listener``, ``define_spool``,
  ``configure_local_logs`` (only inside ``init``), collected by the runtime;
- ``make_queue_config``, ``make_egress_pool``, ``make_egress_source``, ``make_egress_path``:
  return an opaque Lua table that carries a handle to the built (frozen) Python object, so an
  event returning it hands Python the original object. The handle is released when Lua
  garbage-collects the table (the finalizer only queues the handle in Lua; the next ``make_*``
  call releases the queued handles, so no Python code runs inside a Lua finalizer).

Builders come from the runtime's injected ``builders`` mapping; this module imports no config
classes. A builder's ConfigError becomes a Lua error raised at the policy's calling line.

L2: imports only the standard library and kumoq.lua.message; the runtime under TYPE_CHECKING.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from kumoq.lua.message import LuaApiError

if TYPE_CHECKING:
    from kumoq.lua.runtime import PolicyRuntime

__all__ = ["DECLARATIONS", "LUA_SOURCE", "MAKERS", "python_api"]

policy_log = logging.getLogger("kumoq.policy")

DECLARATIONS: Final = (
    "start_esmtp_listener",
    "start_http_listener",
    "define_spool",
    "configure_local_logs",
    "configure_test_resolver",
)
MAKERS: Final = ("make_queue_config", "make_egress_pool", "make_egress_source", "make_egress_path")

LUA_SOURCE: Final = r"""
local py, M = ...
local ERR, OPAQUE, REJECT = M.ERR, M.OPAQUE, M.REJECT
local setmetatable, type, error, select, tostring, pcall =
  setmetatable, type, error, select, tostring, pcall
local concat, gsub, utf8len, tointeger = table.concat, string.gsub, utf8.len, math.tointeger
local unpack = table.unpack

local kumo = {}
kumo.on = M.on

local function printable(s)
  if utf8len(s) == nil then s = gsub(s, '[\128-\255]', '?') end
  return s
end

local function raise_reject(fname, code, message, how)
  local c = type(code) == 'number' and tointeger(code)
  if not c then error(fname .. ': code must be an integer, got ' .. tostring(code), 3) end
  if c < 400 or c > 599 then
    error(fname .. ': code must be a 4xx or 5xx reply code, got ' .. tostring(c), 3)
  end
  if type(message) ~= 'string' then
    error(fname .. ': message must be a string, got ' .. type(message), 3)
  end
  error(setmetatable({code = c, message = printable(message), how = how}, REJECT), 0)
end
function kumo.reject(code, message) raise_reject('reject', code, message, 'If421') end
function kumo.disconnect(code, message, how)
  if how == nil then how = 'ForceDisconnect' end
  if how ~= 'ForceDisconnect' and how ~= 'If421' then
    error("disconnect: how must be 'ForceDisconnect' or 'If421', got " .. tostring(how), 2)
  end
  raise_reject('disconnect', code, message, how)
end

local py_json_encode, py_json_parse = py.kumo_json_encode, py.kumo_json_parse
local function encoder(pretty)
  return function(value)
    if type(value) == 'string' and utf8len(value) == nil then
      error('json_encode: string is not valid UTF-8', 2)
    end
    local s, e = py_json_encode(value, pretty)
    if s == ERR then error(e, 2) end
    return s
  end
end
kumo.json_encode = encoder(false)
kumo.json_encode_pretty = encoder(true)
function kumo.json_parse(s)
  if type(s) ~= 'string' then error('json_parse: expected a string, got ' .. type(s), 2) end
  if utf8len(s) == nil then error('json_parse: input is not valid UTF-8', 2) end
  local v, e = py_json_parse(s)
  if v == ERR then error(e, 2) end
  return v
end

local py_log = py.kumo_log
local function logger(level)
  return function(...)
    local parts = {}
    for i = 1, select('#', ...) do parts[i] = tostring((select(i, ...))) end
    py_log(level, printable(concat(parts, ' ')))
  end
end
kumo.log_debug = logger(10)
kumo.log_info = logger(20)
kumo.log_warn = logger(30)
kumo.log_error = logger(40)

-- The declaration and make_* functions are often tail-called (`return kumo.make_queue_config
-- {...}`), and a tail call into a Lua function drops the caller's frame, with it the line an
-- error must name. So they are callable tables whose __call is a C function: a coroutine.wrap
-- function, which keeps the caller's frame and prefixes a string error with the caller's
-- "file:line:". A coroutine that raised is dead, so it is replaced after each error.
local pack, yield, cowrap = table.pack, coroutine.yield, coroutine.wrap
local function c_callable(name, fn)
  local mt = {__metatable = false}
  function mt.__tostring() return 'function: kumo.' .. name end
  function mt.__index(_, k)
    error('kumo.' .. name .. ' is a function; it has no field ' .. tostring(k), 2)
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

local py_declare, py_make, py_release = py.kumo_declare, py.kumo_make, py.kumo_release
local function check_table(kind, params)
  if type(params) ~= 'table' then
    error(kind .. ': expected a table, got ' .. type(params), 0)
  end
end
local function declaration(kind)
  return c_callable(kind, function(params)
    check_table(kind, params)
    local r, e = py_declare(kind, params)
    if r == ERR then error(e, 0) end
  end)
end
local function maker(kind)
  local mt = {__metatable = kind}
  function mt.__tostring() return kind end
  function mt.__index(_, k)
    error(kind .. ': the result is opaque; it has no field ' .. tostring(k), 2)
  end
  function mt.__newindex() error(kind .. ': the result is read-only', 2) end
  function mt.__gc(t)  -- no Python call here: finalizers also run inside lua_close
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
    local h, e = py_make(kind, params)
    if h == ERR then error(e, 0) end
    local t = setmetatable({}, mt)
    OPAQUE[t] = h
    return t
  end)
end
for _, kind in ipairs(M.declarations) do kumo[kind] = declaration(kind) end

-- kumo.dns.configure_test_resolver(zone_text | {zone_text, ...}): answer DNS from zone text
-- instead of the network (init only), so tests and staging route domains to 127.0.0.x.
kumo.dns = {}
local dns_declare = declaration('configure_test_resolver')
kumo.dns.configure_test_resolver = function(zones)
  if type(zones) ~= 'string' and type(zones) ~= 'table' then
    error('configure_test_resolver: expected zone text or a list of zone texts, got '
      .. type(zones), 2)
  end
  dns_declare { zones = zones }
end

-- kumo.dns.lookup_mx(domain): the domain's MX as KumoMTA's MailExchanger table. Waits for DNS
-- by yielding to the event coroutine kumoq runs every handler in (see kumoq/lua/waits.py).
local running, isyieldable, yield = coroutine.running, coroutine.isyieldable, coroutine.yield
local PENDING, EVENT_COROUTINES = M.PENDING, M.EVENT_COROUTINES
kumo.dns.lookup_mx = function(domain)
  if type(domain) ~= 'string' then
    error('kumo.dns.lookup_mx: expected a domain name, got ' .. type(domain), 2)
  end
  if not EVENT_COROUTINES[running()] or not isyieldable() then
    error('kumo.dns.lookup_mx: cannot wait for DNS here; call it from the handler itself, '
      .. 'not from a coroutine, metamethod or callback of the policy\'s own', 2)
  end
  local ok, res = yield(PENDING, 'lookup_mx', domain)
  if not ok then error(res, 2) end
  return res
end
for _, kind in ipairs(M.makers) do kumo[kind] = maker(kind) end

M.kumo = kumo
_G.kumo = kumo
package.loaded.kumo = kumo
"""


def python_api(rt: PolicyRuntime) -> dict[str, Callable[..., Any]]:
    """The Python functions behind the ``kumo`` module."""
    from_lua = rt.from_lua
    to_lua = rt.to_lua

    def json_encode(value: object, pretty: bool) -> str:
        data = from_lua(value)
        if pretty:
            return json.dumps(data, ensure_ascii=False, sort_keys=True, indent=2, allow_nan=False)
        return json.dumps(
            data, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
        )

    def json_parse(text: str) -> Any:
        return to_lua(json.loads(text))

    def log(level: int, text: str) -> None:
        policy_log.log(level, "%s", text)

    def prefixed(kind: str, fn: Callable[[Any], Any], arg: Any) -> Any:
        try:
            return fn(arg)
        except (ValueError, TypeError, LookupError) as e:
            text = str(e)
            raise LuaApiError(text if text.startswith(f"{kind}:") else f"{kind}: {text}") from e

    def build(kind: str, params: object) -> object:
        mapping = from_lua(params, config=True)
        builder = rt.builders.get(kind)
        return prefixed(kind, builder, mapping) if builder is not None else mapping

    def declare(kind: str, params: object) -> None:
        if rt.phase != "init":
            raise LuaApiError(f"{kind}: may only be called from inside the init event handler")
        built = build(kind, params)
        rt.declarations.add(kind, built)
        callback = rt.declare_callback
        if callback is not None:
            prefixed(kind, lambda value: callback(kind, value), built)

    def make(kind: str, params: object) -> int:
        return rt.new_opaque(kind, build(kind, params))

    def release(*handles: int) -> None:
        for h in handles:
            rt.opaque.pop(h, None)

    return {
        "kumo_json_encode": rt.guard("json_encode", json_encode),
        "kumo_json_parse": rt.guard("json_parse", json_parse),
        "kumo_log": rt.guard("log", log),
        "kumo_declare": rt.guard(None, declare),
        "kumo_make": rt.guard(None, make),
        "kumo_release": rt.guard("release", release),
    }
