"""The Lua side never reaches a Python object (lupa attribute_filter bypasses, CVE-2026-34444)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from kumoq.lua import ConnMeta, PolicyEvents, PolicyRuntime
from kumoq.message import EnvelopeAddress, Message, new_spool_id

# Walk everything reachable from the globals and from the objects kumoq hands to Lua, with
# raw iteration, metatables and the known method names; report every userdata that is not
# one of Lua's own io files.
WALK = r"""
local function walk(roots)
  local seen, found = {}, {}
  local function visit(v, path)
    local t = type(v)
    if t == 'userdata' then
      if io.type(v) == nil then table.insert(found, path) end
      return
    end
    if t ~= 'table' or seen[v] then return end
    seen[v] = true
    local k, item = next(v)
    while k ~= nil do
      visit(k, path .. '.<key>')
      visit(item, path .. '.' .. tostring(k))
      k, item = next(v, k)
    end
    local mt = getmetatable(v)
    if mt ~= nil then visit(mt, path .. '.<mt>') end
  end
  for name, root in pairs(roots) do visit(root, name) end
  visit(getmetatable(''), 'string_mt')
  return found
end
"""


@pytest.fixture
def msg():
    return Message(
        id=new_spool_id(1_700_000_000.0),
        sender=EnvelopeAddress.parse("a@b.example"),
        recipients=[EnvelopeAddress.parse("c@d.example")],
        data=b"Subject: x\r\n\r\nbody",
    )


def events(tmp_path: Path, src: str) -> PolicyEvents:
    path = tmp_path / "init.lua"
    path.write_text(WALK + textwrap.dedent(src))
    return PolicyEvents(PolicyRuntime(path))


def test_python_debug_and_c_loaders_are_gone(tmp_path):
    ev = events(
        tmp_path,
        """
        kumo.on('check', function()
          return {
            python == nil, debug == nil, package.loaded.python == nil,
            package.loaded.debug == nil, package.loadlib == nil, package.cpath == '',
            #package.searchers, (pcall(require, 'python')),
          }
        end)
        """,
    )
    assert ev.call("check") == [True, True, True, True, True, True, 2, False]


def test_binary_chunks_cannot_be_loaded(tmp_path):
    ev = events(
        tmp_path,
        """
        kumo.on('check', function()
          local dumped = string.dump(function() return 1 end)
          local a, err_a = load(dumped)
          local b, err_b = load(dumped, 'x', 'b')
          local c = load('return 5', 'x', 'bt')
          return {a == nil, b == nil, err_a, c()}
        end)
        """,
    )
    out = ev.call("check")
    assert out[:2] == [True, True]
    assert "binary chunk" in out[2]
    assert out[3] == 5


def test_no_python_object_is_reachable(tmp_path, msg):
    ev = events(
        tmp_path,
        """
        QC = kumo.make_queue_config {}
        kumo.on('walk', function(msg, conn, addr)
          local roots = {G = _G, loaded = package.loaded, msg = msg, conn = conn, addr = addr,
                         sender = msg:sender(), qc = QC, headers = msg:get_all_headers()}
          -- methods are reachable by name even though getmetatable() hides the method table
          for _, name in ipairs({'get_meta', 'set_meta', 'sender', 'get_data', 'set_scheduling'}) do
            roots['method_' .. name] = msg[name]
          end
          roots.conn_get = conn.get_meta
          return walk(roots)
        end)
        """,
    )
    assert ev.call("walk", msg, ConnMeta(), EnvelopeAddress.parse("x@y.example")) == {}


def test_metatables_are_hidden(tmp_path, msg):
    ev = events(
        tmp_path,
        """
        kumo.on('mts', function(msg, conn)
          return {getmetatable(msg), getmetatable(conn), getmetatable(msg:sender()),
                  getmetatable(kumo.make_queue_config {}), getmetatable(kumo.make_queue_config),
                  (pcall(setmetatable, msg, {}))}
        end)
        """,
    )
    assert ev.call("mts", msg, ConnMeta()) == [
        "Message",
        "ConnectionMeta",
        "EnvelopeAddress",
        "make_queue_config",
        False,
        False,
    ]


@pytest.mark.parametrize(
    "expr",
    [
        "kumo.json_encode.__class__",
        "kumo.on.__class__",
        "kumo.make_queue_config.__class__",
        "kumo.start_esmtp_listener.__globals__",
        "msg.get_meta.__class__",
        "msg.sender.__self__",
        "(kumo.make_queue_config {}).__class__",
    ],
)
def test_attribute_access_on_our_functions_fails(tmp_path, msg, expr):
    ev = events(
        tmp_path,
        f"""
        kumo.on('attr', function(msg)
          local ok, err = pcall(function() return {expr} end)
          return {{ok, type(err)}}
        end)
        """,
    )
    assert ev.call("attr", msg) == [False, "string"]


@pytest.mark.parametrize(
    "call",
    [
        "msg:set_meta('k', coroutine.create(print))",
        "msg:set_meta('k', {['\\xff'] = 1})",
        "msg:set_meta('k', '\\xff')",
        "msg:get_meta({})",
        "msg:set_recipient({{}})",
        "msg:set_scheduling('x')",
        "msg:append_header(nil, nil, nil)",
        "msg:get_first_named_header_value(io.stdout)",
        "msg:set_data(nil)",
        "msg:set_due({})",
        "msg:import_x_headers({1, 2})",
        "conn:set_meta('k', print)",
        "kumo.json_encode(cyclic)",
        "kumo.json_parse('[1,')",
        "kumo.make_queue_config {retry_interval = io.stdout}",
        "kumo.make_queue_config(cyclic)",
        "kumo.log_info(io.stdout, '\\xff')",
        "kumo.reject({}, {})",
    ],
)
def test_errors_reaching_lua_are_strings(tmp_path, msg, call):
    ev = events(
        tmp_path,
        f"""
        cyclic = {{}}
        cyclic.self = cyclic
        kumo.on('err', function(msg, conn)
          local ok, err = pcall(function() {call} end)
          return {{ok, type(err)}}
        end)
        """,
    )
    ok, kind = ev.call("err", msg, ConnMeta())
    assert kind in ("string", "nil")
    assert kind == "string" or ok


def test_lua_never_sees_the_python_message(tmp_path, msg):
    ev = events(
        tmp_path,
        """
        kumo.on('raw', function(msg)
          local keys = {}
          for k in pairs(msg) do keys[#keys + 1] = tostring(k) end
          return {#keys, type(msg), rawget(msg, 'id') == nil}
        end)
        """,
    )
    assert ev.call("raw", msg) == [0, "table", True]
