"""The Lua ``Message``, ``EnvelopeAddress`` and ``conn_meta`` objects (reference §2.10).

The objects are plain Lua tables with a metatable defined in ``LUA_SOURCE``; a message or a
connection's meta is found through an integer handle kept in a private weak table, and each
method calls one Python function from ``python_api`` with that handle. Creating the objects for
an event costs no Python call: ``wrap`` (used by the runtime's ``invoke``) builds them in Lua.
Addresses are built in Lua from ``(local part, domain)`` strings.

Strings from Lua are checked for valid UTF-8 before they are passed to Python (lupa would raise
while converting them); only ``set_data`` accepts arbitrary bytes, which it transfers in a
Latin-1 form when they are not UTF-8.

The scheduling helpers (``parse_scheduling``, ``adjust_for_schedule``, ``format_due``) live in
kumoq.scheduler.scheduling and are re-exported here.

L2: imports kumoq.headers, kumoq.message, kumoq.scheduler.scheduling and kumoq.errors; the
runtime only under TYPE_CHECKING.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from kumoq import headers
from kumoq.message import EnvelopeAddress
from kumoq.scheduler.scheduling import (
    adjust_for_schedule,
    format_due,
    parse_rfc3339,
    parse_scheduling,
)

if TYPE_CHECKING:
    from kumoq.lua.runtime import PolicyRuntime

__all__ = [
    "LUA_SOURCE",
    "ConnMeta",
    "LuaApiError",
    "adjust_for_schedule",
    "format_due",
    "parse_scheduling",
    "python_api",
]


class LuaApiError(ValueError):
    """A policy called a kumo function or an object method wrongly; becomes a Lua error."""


class ConnMeta(dict[str, Any]):
    """Marks a dict passed to ``PolicyEvents.call`` as connection meta (a ``conn_meta`` object
    with ``get_meta``/``set_meta``) rather than as a plain data table."""


LUA_SOURCE: Final = r"""
local py, M = ...
local ERR = M.ERR
local setmetatable, type, error, select, tostring = setmetatable, type, error, select, tostring
local byte, gsub, char = string.byte, string.gsub, string.char
local utf8len, utf8char, unpack = utf8.len, utf8.char, table.unpack

local MH = setmetatable({}, {__mode = 'k'})  -- Message object -> handle
local CH = setmetatable({}, {__mode = 'k'})  -- conn_meta object -> handle

local function readonly(_, k)
  error('cannot set field ' .. tostring(k) .. ': this object has methods, not fields', 2)
end
local function bad_utf8(name) error(name .. ': string argument is not valid UTF-8', 3) end
local function not_object(name, what)
  error(name .. ': expected a ' .. what .. ' object (call it as obj:' .. name .. '(...))', 3)
end

local ADDR = {__metatable = 'EnvelopeAddress'}
function ADDR.__tostring(a) return a.email end
function ADDR.__eq(a, b) return a.email == b.email end
local function new_address(user, domain)
  local email = ''
  if user ~= '' or domain ~= '' then email = user .. '@' .. domain end
  return setmetatable({user = user, domain = domain, email = email}, ADDR)
end
local function address_text(v)
  if type(v) == 'table' then v = v.email end
  if type(v) == 'string' and utf8len(v) == nil then bad_utf8('address') end
  return v
end

local MSG = {}
local MSG_MT = {__index = MSG, __newindex = readonly, __metatable = 'Message'}
function MSG_MT.__tostring(m)
  local h = MH[m]
  local id = h and py.id(h)
  if id == nil or id == ERR then return 'Message' end
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
    if h == nil then not_object(name, 'Message') end
    local r, e = f(h)
    if r == ERR then error(e, 2) end
    return r
  end
end
local function method1(name)
  local f = py[name]
  MSG[name] = function(self, a)
    local h = MH[self]
    if h == nil then not_object(name, 'Message') end
    if type(a) == 'string' and utf8len(a) == nil then bad_utf8(name) end
    local r, e = f(h, a)
    if r == ERR then error(e, 2) end
    return r
  end
end
local function method2(name)
  local f = py[name]
  MSG[name] = function(self, a, b)
    local h = MH[self]
    if h == nil then not_object(name, 'Message') end
    if type(a) == 'string' and utf8len(a) == nil then bad_utf8(name) end
    if type(b) == 'string' and utf8len(b) == nil then bad_utf8(name) end
    local r, e = f(h, a, b)
    if r == ERR then error(e, 2) end
    return r
  end
end
local function method3(name)
  local f = py[name]
  MSG[name] = function(self, a, b, c)
    local h = MH[self]
    if h == nil then not_object(name, 'Message') end
    if type(a) == 'string' and utf8len(a) == nil then bad_utf8(name) end
    if type(b) == 'string' and utf8len(b) == nil then bad_utf8(name) end
    local r, e = f(h, a, b, c)
    if r == ERR then error(e, 2) end
    return r
  end
end

for _, name in ipairs({'id', 'get_data', 'queue_name', 'num_attempts', 'increment_num_attempts'})
do method0(name) end
for _, name in ipairs({'get_meta', 'get_first_named_header_value', 'remove_all_named_headers',
  'import_x_headers', 'remove_x_headers', 'set_scheduling', 'set_due'}) do method1(name) end
for _, name in ipairs({'set_meta', 'import_scheduling_header'}) do method2(name) end
for _, name in ipairs({'append_header', 'prepend_header'}) do method3(name) end

local LATIN1 = {}
for b = 128, 255 do LATIN1[char(b)] = utf8char(b) end
local py_set_data = py.set_data
function MSG:set_data(s)
  local h = MH[self]
  if h == nil then not_object('set_data', 'Message') end
  if type(s) ~= 'string' then error('set_data: expected a string, got ' .. type(s), 2) end
  local r, e
  if utf8len(s) ~= nil then
    r, e = py_set_data(h, s, false)
  else
    r, e = py_set_data(h, gsub(s, '[\128-\255]', LATIN1), true)
  end
  if r == ERR then error(e, 2) end
end

local py_sender = py.sender
function MSG:sender()
  local h = MH[self]
  if h == nil then not_object('sender', 'Message') end
  local u, d = py_sender(h)
  if u == ERR then error(d, 2) end
  return new_address(u, d)
end

local py_recipients = py.recipients
local function recipients(self, name)
  local h = MH[self]
  if h == nil then not_object(name, 'Message') end
  local t = {py_recipients(h)}
  if t[1] == ERR then error(t[2], 3) end
  local out = {}
  for i = 1, #t, 2 do out[#out + 1] = new_address(t[i], t[i + 1]) end
  return out
end
function MSG:recipient_list() return (recipients(self, 'recipient_list')) end
function MSG:recipient()
  local list = recipients(self, 'recipient')
  if #list == 1 then return list[1] end
  if #list == 0 then return nil end
  return list
end

local py_set_sender, py_set_recipient = py.set_sender, py.set_recipient
function MSG:set_sender(v)
  local h = MH[self]
  if h == nil then not_object('set_sender', 'Message') end
  local r, e = py_set_sender(h, address_text(v))
  if r == ERR then error(e, 2) end
end
function MSG:set_recipient(v)
  local h = MH[self]
  if h == nil then not_object('set_recipient', 'Message') end
  local r, e
  if type(v) == 'table' and v.email == nil then
    local n, emails = #v, {}
    for i = 1, n do emails[i] = address_text(v[i]) end
    r, e = py_set_recipient(h, unpack(emails, 1, n))
  else
    r, e = py_set_recipient(h, address_text(v))
  end
  if r == ERR then error(e, 2) end
end

local function listing(name, pairs_of_two)
  local f = py[name]
  MSG[name] = function(self, a)
    local h = MH[self]
    if h == nil then not_object(name, 'Message') end
    if type(a) == 'string' and utf8len(a) == nil then bad_utf8(name) end
    local t = {f(h, a)}
    if t[1] == ERR then error(t[2], 2) end
    if not pairs_of_two then return t end
    local out = {}
    for i = 1, #t, 2 do out[#out + 1] = {t[i], t[i + 1]} end
    return out
  end
end
listing('get_all_named_header_values', false)
listing('get_all_headers', true)

local CONN = {}
local CONN_MT = {__index = CONN, __newindex = readonly, __metatable = 'ConnectionMeta'}
function CONN_MT.__tostring() return 'ConnectionMeta' end
local function new_conn(h)
  local c = setmetatable({}, CONN_MT)
  CH[c] = h
  return c
end
local py_conn_get, py_conn_set = py.conn_get_meta, py.conn_set_meta
function CONN:get_meta(key)
  local h = CH[self]
  if h == nil then not_object('get_meta', 'conn_meta') end
  if type(key) == 'string' and utf8len(key) == nil then bad_utf8('get_meta') end
  local r, e = py_conn_get(h, key)
  if r == ERR then error(e, 2) end
  return r
end
function CONN:set_meta(key, value)
  local h = CH[self]
  if h == nil then not_object('set_meta', 'conn_meta') end
  if type(key) == 'string' and utf8len(key) == nil then bad_utf8('set_meta') end
  if type(value) == 'string' and utf8len(value) == nil then bad_utf8('set_meta') end
  local r, e = py_conn_set(h, key, value)
  if r == ERR then error(e, 2) end
end

-- Turn handles into objects for an event call; one shape letter per object (see invoke).
local function wrap(shape, i, ...)
  local c = byte(shape, i)
  if c == nil then return end
  if c == 109 then return new_message((...)), wrap(shape, i + 1, select(2, ...)) end
  if c == 99 then return new_conn((...)), wrap(shape, i + 1, select(2, ...)) end
  if c == 97 then
    local u, d = ...
    return new_address(u, d), wrap(shape, i + 1, select(3, ...))
  end
  return (...), wrap(shape, i + 1, select(2, ...))
end
M.wrap = wrap
M.new_address = new_address
"""


def python_api(rt: PolicyRuntime) -> dict[str, Callable[..., Any]]:
    """The Python functions behind the Lua objects, each taking a handle first."""
    message = rt.message
    to_lua = rt.to_lua
    from_lua = rt.from_lua

    def key_of(key: object) -> str:
        if not isinstance(key, str):
            raise LuaApiError(f"meta key must be a string, got {key!r}")
        return key

    def text_of(what: str, value: object) -> str:
        if not isinstance(value, str):
            raise LuaApiError(f"{what} must be a string, got {value!r}")
        return value

    def data_of(h: int) -> bytes:
        data = message(h).data
        if data is None:
            raise LuaApiError("the message data is not loaded")
        return data

    def address_of(value: object) -> EnvelopeAddress:
        return EnvelopeAddress.parse(text_of("address", value))

    def names_of(value: object) -> list[str] | None:
        names = from_lua(value) if value is not None else None
        if names is None or names == {}:
            return None
        if isinstance(names, str):
            return [names]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise LuaApiError(f"expected a list of header names, got {names!r}")
        return names

    def id_(h: int) -> str:
        return message(h).id

    def get_meta(h: int, key: object) -> Any:
        return to_lua(message(h).meta.get(key_of(key)))

    def set_meta(h: int, key: object, value: object) -> None:
        message(h).meta[key_of(key)] = from_lua(value)

    def get_data(h: int) -> bytes:
        return data_of(h)

    def set_data(h: int, text: str, latin1: bool) -> None:
        message(h).data = text.encode("latin-1" if latin1 else "utf-8")

    def sender(h: int) -> tuple[str, str]:
        a = message(h).sender
        return to_lua(a.local_part), to_lua(a.domain)

    def recipients(h: int) -> tuple[str, ...]:
        out: list[str] = []
        for a in message(h).recipients:
            out += (to_lua(a.local_part), to_lua(a.domain))
        return tuple(out)

    def set_sender(h: int, value: object) -> None:
        message(h).sender = address_of(value)

    def set_recipient(h: int, *values: object) -> None:
        if not values:
            raise LuaApiError("expected at least one recipient")
        message(h).recipients = [address_of(v) for v in values]

    def queue_name(h: int) -> str:
        return message(h).queue_name()

    def num_attempts(h: int) -> int:
        return message(h).num_attempts

    def increment_num_attempts(h: int) -> None:
        message(h).num_attempts += 1

    def add_header(prepend: bool) -> Callable[..., None]:
        op = headers.prepend_header if prepend else headers.append_header

        def add(h: int, name: object, value: object, encode: object) -> None:
            data = data_of(h)
            text = text_of("header value", value)
            message(h).data = op(data, text_of("header name", name), text, encode=bool(encode))

        return add

    def get_first_named_header_value(h: int, name: object) -> Any:
        return to_lua(headers.first_named(data_of(h), text_of("header name", name)))

    def get_all_named_header_values(h: int, name: object) -> tuple[Any, ...]:
        values = headers.all_named(data_of(h), text_of("header name", name))
        return tuple(to_lua(v) for v in values)

    def get_all_headers(h: int, _unused: object = None) -> tuple[Any, ...]:
        out: list[Any] = []
        for name, value in headers.all_headers(data_of(h)):
            out += (name, to_lua(value))
        return tuple(out)

    def remove_all_named_headers(h: int, name: object) -> None:
        message(h).data = headers.remove_all_named(data_of(h), text_of("header name", name))

    def import_x_headers(h: int, names: object) -> None:
        msg = message(h)
        for key, value in headers.x_header_values(data_of(h), names_of(names)):
            msg.meta[key] = _clean(value)

    def remove_x_headers(h: int, names: object) -> None:
        message(h).data = headers.remove_x_headers(data_of(h), names_of(names))

    def apply_schedule(h: int, sched: dict[str, Any] | None) -> Any:
        msg = message(h)
        msg.schedule = sched
        if sched is None:
            return None
        base = msg.due if msg.due is not None else rt.clock.now()
        adjusted = adjust_for_schedule(sched, base)
        if msg.due is not None or adjusted > base:
            msg.due = adjusted
        return to_lua(sched)

    def set_scheduling(h: int, params: object) -> Any:
        if params is None:
            return apply_schedule(h, None)
        mapping = from_lua(params)
        if not isinstance(mapping, dict):
            raise LuaApiError(f"expected a table or nil, got {mapping!r}")
        return apply_schedule(h, parse_scheduling(mapping))

    def import_scheduling_header(h: int, name: object, remove: object) -> Any:
        header = text_of("header name", name)
        value = headers.first_named(data_of(h), header)
        if value is None:
            return None
        try:
            mapping = json.loads(value)
            if not isinstance(mapping, dict):
                raise LuaApiError("expected a JSON object")
            sched = parse_scheduling(mapping)
        except ValueError as e:
            msg = f"{value} from header {header} is not a valid Scheduling: {e}"
            raise LuaApiError(msg) from None
        result = apply_schedule(h, sched)
        if remove:
            message(h).data = headers.remove_all_named(data_of(h), header)
        return result

    def set_due(h: int, value: object) -> Any:
        msg = message(h)
        due = None if value is None else parse_rfc3339("set_due", value).timestamp()
        if msg.schedule is not None:
            due = adjust_for_schedule(msg.schedule, due if due is not None else rt.clock.now())
        msg.due = due
        return None if due is None else format_due(due)

    def conn_get_meta(h: int, key: object) -> Any:
        return to_lua(rt.conn(h).get(key_of(key)))

    def conn_set_meta(h: int, key: object, value: object) -> None:
        rt.conn(h)[key_of(key)] = from_lua(value)

    functions: dict[str, Callable[..., Any]] = {
        "id": id_,
        "get_meta": get_meta,
        "set_meta": set_meta,
        "get_data": get_data,
        "set_data": set_data,
        "sender": sender,
        "recipients": recipients,
        "set_sender": set_sender,
        "set_recipient": set_recipient,
        "queue_name": queue_name,
        "num_attempts": num_attempts,
        "increment_num_attempts": increment_num_attempts,
        "append_header": add_header(prepend=False),
        "prepend_header": add_header(prepend=True),
        "get_first_named_header_value": get_first_named_header_value,
        "get_all_named_header_values": get_all_named_header_values,
        "get_all_headers": get_all_headers,
        "remove_all_named_headers": remove_all_named_headers,
        "import_x_headers": import_x_headers,
        "remove_x_headers": remove_x_headers,
        "set_scheduling": set_scheduling,
        "import_scheduling_header": import_scheduling_header,
        "set_due": set_due,
        "conn_get_meta": conn_get_meta,
        "conn_set_meta": conn_set_meta,
    }
    return {name: rt.guard(name.removeprefix("conn_"), fn) for name, fn in functions.items()}


def _clean(value: str) -> str:
    """A decoded header value fit for meta (JSON): undecodable bytes become U+FFFD."""
    if value.isascii():
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
