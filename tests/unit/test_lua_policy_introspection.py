"""kumo.get_event_registrars, kumo.set_config_monitor_globs / eval_config_monitor_globs and
kumo.make_message: what KumoMTA's helpers call in ``validate_config`` and their self-tests.

Real Lua, real files under tmp_path."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from kumoq.errors import PolicyError
from kumoq.lua import PolicyEvents
from kumoq.lua.host import eval_globs, expand_braces
from tests.unit.lua_kumo_support import call, load

# -- get_event_registrars ------------------------------------------------------------------------

HELPER = """
local mod = {}
function mod.setup()
  kumo.on('get_queue_config', function() end)
end
return mod
"""

REGISTRARS = """
kumo.on('get_queue_config', function() end)
local helper = require 'helper'
helper.setup()
kumo.on('t', function(name)
  return kumo.get_event_registrars(name)
end)
"""


def test_each_kumo_on_is_recorded_with_its_call_stack(tmp_path: Path) -> None:
    (tmp_path / "helper.lua").write_text(HELPER)
    events = PolicyEvents(load(tmp_path, REGISTRARS))
    first, second = events.call("t", "get_queue_config")
    assert first[0] == "init.lua:2"
    assert second[:2] == ["helper.lua:4", "init.lua:4"]  # the caller of kumo.on first
    assert events.call("t", "never_registered") is None
    # A copy: changing it changes nothing.
    assert events.call("t", "t")[0][0] == "init.lua:5"


def test_queue_lua_style_last_registrar_check(tmp_path: Path) -> None:
    """The check KumoMTA's queue helper makes: is this file the last to register?"""
    (tmp_path / "helper.lua").write_text(
        HELPER.replace(
            "return mod",
            """function mod.is_last()
  local regs = kumo.get_event_registrars 'get_queue_config'
  local mine = kumo.traceback(1)[1].short_src .. ':'
  return regs[#regs][1]:sub(1, #mine) == mine
end
return mod""",
        )
    )
    policy = REGISTRARS.replace(
        "kumo.on('t', function(name)\n  return kumo.get_event_registrars(name)",
        "kumo.on('t', function(name)\n  return helper.is_last()",
    )
    assert PolicyEvents(load(tmp_path, policy)).call("t", "") is True


# -- config monitor globs ------------------------------------------------------------------------


def test_brace_expansion() -> None:
    assert expand_braces("/a/**/*.{lua,toml}") == ["/a/**/*.lua", "/a/**/*.toml"]
    assert expand_braces("{x,y}.{1,2}") == ["x.1", "x.2", "y.1", "y.2"]
    assert expand_braces("plain") == ["plain"]


def test_eval_globs_lists_matching_files_once(tmp_path: Path) -> None:
    (tmp_path / "etc" / "sub").mkdir(parents=True)
    for name in ("etc/a.toml", "etc/sub/b.lua", "etc/sub/c.txt", "etc/d.json"):
        (tmp_path / name).write_text("")
    root = tmp_path / "etc"
    found = eval_globs([f"{root}/**/*.{{lua,toml}}", f"{root}/*.toml"])
    assert found == [f"{root}/a.toml", f"{root}/sub/b.lua"]


def test_the_policy_sets_and_evaluates_the_globs(tmp_path: Path) -> None:
    (tmp_path / "queues.toml").write_text("")
    default, mine = call(
        tmp_path,
        f"""
        local default = kumo.eval_config_monitor_globs()
        kumo.set_config_monitor_globs {{ '{tmp_path}/*.toml' }}
        return {{ #default, kumo.eval_config_monitor_globs() }}
        """,
    )
    assert default >= 0  # whatever /opt/kumomta/etc holds on this machine
    assert mine == [f"{tmp_path}/queues.toml"]
    with pytest.raises(PolicyError, match="set_config_monitor_globs: glob #1 is a number"):
        call(tmp_path, "kumo.set_config_monitor_globs { 1 }")


# -- make_message --------------------------------------------------------------------------------


def test_make_message_builds_a_message_the_methods_work_on(tmp_path: Path) -> None:
    got = call(
        tmp_path,
        """
        local msg = kumo.make_message(
          'sender@example.com', 'rcpt@example.net',
          'Subject: hello\\r\\nX-Tenant: mytenant\\r\\n\\r\\nHi \\255!\\r\\n'
        )
        msg:set_meta('tenant', msg:get_first_named_header_value 'X-Tenant')
        msg:remove_all_named_headers 'X-Tenant'
        local data = msg:get_data()
        return { tostring(msg:sender()), msg:recipient().domain, msg:get_meta 'tenant',
                 data:sub(1, 18), data:byte(-4) }
        """,
    )
    assert got == ["sender@example.com", "example.net", "mytenant", "Subject: hello\r\n\r\n", 255]


def test_made_messages_are_released_once_collected(tmp_path: Path) -> None:
    rt = load(
        tmp_path,
        """
        kumo.on('t', function()
          for i = 1, 50 do
            kumo.make_message('a@example.com', 'b@example.com', 'x')
          end
          collectgarbage()
          collectgarbage()
          kumo.make_message('a@example.com', 'b@example.com', 'x')
        end)
        kumo.on('bad', function() kumo.make_message('a@example.com', 'not an address', 'x') end)
        """,
    )
    PolicyEvents(rt).call("t")
    gc.collect()
    assert len(rt.messages) <= 2  # the 50 collected ones were released at the next call
    with pytest.raises(PolicyError, match="make_message"):
        PolicyEvents(rt).call("bad")
