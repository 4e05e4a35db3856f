"""kumoq.lua.runtime: loading the policy, kumo.on rules, errors naming file and line, init."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from kumoq.errors import PolicyError, RejectError
from kumoq.lua import EmptyTable, PolicyEvents, PolicyRuntime


def write(tmp_path: Path, src: str, name: str = "init.lua") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(src))
    return path


def load(tmp_path: Path, src: str, **kw: Any) -> PolicyRuntime:
    return PolicyRuntime(write(tmp_path, src), **kw)


def test_require_kumo_and_global_kumo_are_the_same_module(tmp_path):
    rt = load(
        tmp_path,
        """
        local k = require 'kumo'
        assert(k == kumo, 'require and global differ')
        k.on('same', function() return rawequal(require('kumo'), kumo) end)
        """,
    )
    assert PolicyEvents(rt).call("same") is True


def test_require_finds_sibling_modules(tmp_path):
    write(tmp_path, "return { answer = function() return 42 end }", "helpers.lua")
    write(tmp_path, "return 'nested'", "lib/init.lua")
    rt = load(
        tmp_path,
        """
        local helpers = require 'helpers'
        local lib = require 'lib'
        kumo.on('answer', function() return helpers.answer() .. lib end)
        """,
    )
    assert PolicyEvents(rt).call("answer") == "42nested"


def test_syntax_error_in_a_sibling_module_names_that_file(tmp_path):
    write(tmp_path, "local x = \nlocal = 1\n", "broken.lua")
    with pytest.raises(PolicyError) as info:
        load(tmp_path, "require 'broken'")
    assert info.value.location == "broken.lua:2"


def test_syntax_error_names_file_and_line(tmp_path):
    with pytest.raises(PolicyError) as info:
        load(
            tmp_path,
            """\
            kumo.on('init', function()
              local x = = 1
            end)
            """,
        )
    assert info.value.location == "init.lua:2"
    assert str(info.value).startswith("init.lua:2: ")
    assert "stack traceback" not in str(info.value)
    assert "<python>" not in str(info.value)


def test_runtime_error_at_load_names_file_and_line(tmp_path):
    with pytest.raises(PolicyError) as info:
        load(tmp_path, "local a = 1\nlocal b = nil + a\n")
    assert info.value.location == "init.lua:2"
    assert "arithmetic" in str(info.value)


def test_runtime_error_in_init_names_file_and_line(tmp_path):
    rt = load(
        tmp_path,
        """\
        kumo.on('init', function()
          local t = nil
          return t.field
        end)
        """,
    )
    with pytest.raises(PolicyError) as info:
        rt.fire_init()
    assert info.value.location == "init.lua:3"
    assert str(info.value) == "init.lua:3: attempt to index a nil value (local 't')"


@pytest.mark.parametrize(
    ("statement", "text"),
    [
        ("error('plain', 0)", "init.lua:2: plain"),
        ("error({})", "init.lua:2: table: "),
        ("error(42)", "init.lua:2: 42"),
    ],
)
def test_errors_without_position_get_the_policy_line(tmp_path, statement, text):
    rt = load(tmp_path, f"kumo.on('init', function()\n  {statement}\nend)\n")
    with pytest.raises(PolicyError) as info:
        rt.fire_init()
    assert info.value.location == "init.lua:2"
    assert str(info.value).startswith(text)


def test_missing_policy_file(tmp_path):
    with pytest.raises(PolicyError, match="cannot read policy file"):
        PolicyRuntime(tmp_path / "nope.lua")


def test_single_handler_event_rejects_a_second_handler(tmp_path):
    with pytest.raises(PolicyError) as info:
        load(
            tmp_path,
            """\
            kumo.on('init', function() end)

            kumo.on('init', function() end)
            """,
        )
    assert str(info.value) == ("init.lua:3: init event already has a handler defined at init.lua:1")
    assert info.value.location == "init.lua:3"


def test_custom_event_names_are_single_handler_too(tmp_path):
    with pytest.raises(PolicyError, match="my_event event already has a handler"):
        load(tmp_path, "kumo.on('my_event', print)\nkumo.on('my_event', print)\n")


def test_multi_handler_event_runs_in_order_first_non_nil_wins(tmp_path):
    rt = load(
        tmp_path,
        """
        calls = {}
        kumo.on('get_queue_config', function(domain)
          table.insert(calls, 'first')
          if domain == 'one.example' then return kumo.make_queue_config { max_age = 1 } end
        end)
        kumo.on('get_queue_config', function(domain)
          table.insert(calls, 'second')
          if domain ~= 'none.example' then return kumo.make_queue_config { max_age = 2 } end
        end)
        kumo.on('get_queue_config', function()
          table.insert(calls, 'third')
          return kumo.make_queue_config { max_age = 3 }
        end)
        kumo.on('calls', function() local c = calls; calls = {}; return c end)
        """,
    )
    ev = PolicyEvents(rt)
    one = ev.get_queue_config("one.example", None, None, None)
    assert one is not None
    assert one.max_age == 1
    assert ev.call("calls") == ["first"]
    two = ev.get_queue_config("two.example", None, None, None)
    assert two is not None
    assert two.max_age == 2
    assert ev.call("calls") == ["first", "second"]
    three = ev.get_queue_config("none.example", None, None, None)
    assert three is not None
    assert three.max_age == 3
    assert ev.call("calls") == ["first", "second", "third"]


def test_all_multi_handler_events_accept_several_handlers(tmp_path):
    names = [
        "get_queue_config",
        "requeue_message",
        "throttle_insert_ready_queue",
        "should_enqueue_log_record",
        "pre_init",
        "validate_config",
    ]
    src = "".join(f"kumo.on('{n}', function() end)\n" * 2 for n in names)
    assert set(load(tmp_path, src).handler_names) == set(names)


def test_multi_handler_all_nil_gives_none(tmp_path):
    rt = load(tmp_path, "kumo.on('get_queue_config', function() end)\n" * 2)
    assert PolicyEvents(rt).get_queue_config("a.example", None, None, None) is None


def test_kumo_on_inside_a_handler_is_an_error(tmp_path):
    rt = load(
        tmp_path,
        """\
        kumo.on('init', function()
          kumo.on('late', function() end)
        end)
        """,
    )
    with pytest.raises(PolicyError) as info:
        rt.fire_init()
    assert info.value.location == "init.lua:2"
    assert "kumo.on" in str(info.value)
    assert "late" in str(info.value)


@pytest.mark.parametrize(
    ("args", "message"),
    [("1, print", "event name must be a string"), ("'x', 'y'", "must be a function")],
)
def test_kumo_on_argument_checks(tmp_path, args, message):
    with pytest.raises(PolicyError, match=message) as info:
        load(tmp_path, f"kumo.on({args})\n")
    assert info.value.location == "init.lua:1"


def test_fire_init_runs_pre_init_handlers_then_init_once(tmp_path):
    rt = load(
        tmp_path,
        """
        order = {}
        kumo.on('pre_init', function() table.insert(order, 'pre1') end)
        kumo.on('pre_init', function() table.insert(order, 'pre2') end)
        kumo.on('init', function() table.insert(order, 'init') end)
        kumo.on('order', function() return order end)
        """,
    )
    assert PolicyEvents(rt).call("order") == {}  # empty table: nothing ran at load
    rt.fire_init()
    assert PolicyEvents(rt).call("order") == ["pre1", "pre2", "init"]
    with pytest.raises(PolicyError, match="already"):
        rt.fire_init()


def test_fire_init_without_init_handler(tmp_path):
    rt = load(tmp_path, "")
    assert rt.fire_init().esmtp_listeners == []


def test_has_handler(tmp_path):
    rt = load(tmp_path, "kumo.on('smtp_server_ehlo', function() end)")
    assert rt.has_handler("smtp_server_ehlo")
    assert PolicyEvents(rt).has_handler("smtp_server_ehlo")
    assert not rt.has_handler("init")


def test_reject_in_init_is_a_reject_error_which_is_a_policy_error(tmp_path):
    rt = load(tmp_path, "kumo.on('init', function() kumo.reject(421, 'not now') end)")
    with pytest.raises(RejectError) as info:
        rt.fire_init()
    assert isinstance(info.value, PolicyError)
    assert (info.value.code, info.value.reply_text, info.value.disconnect) == (421, "not now", True)


def test_reject_is_detected_by_value_not_by_text(tmp_path):
    rt = load(
        tmp_path,
        """
        kumo.on('text', function() error('550 looks like a reject') end)
        kumo.on('caught', function()
          local ok, err = pcall(kumo.reject, 550, 'inner')
          return {ok, err.code, err.message}
        end)
        """,
    )
    ev = PolicyEvents(rt)
    with pytest.raises(PolicyError) as info:
        ev.call("text")
    assert not isinstance(info.value, RejectError)
    assert ev.call("caught") == [False, 550, "inner"]


@pytest.mark.parametrize(
    ("call", "code", "disconnect", "follow"),
    [
        ("kumo.reject(550, 'no')", 550, False, False),
        ("kumo.reject(421.0, 'no')", 421, True, False),
        ("kumo.disconnect(550, 'no')", 550, True, False),
        ("kumo.disconnect(451, 'no', 'If421')", 451, False, False),
        ("kumo.disconnect(421, 'no', 'If421')", 421, True, False),
        ("kumo.disconnect(451, 'no', 'FollowWith421')", 451, True, True),
        ("kumo.disconnect(421, 'no', 'FollowWith421')", 421, True, False),
    ],
)
def test_reject_and_disconnect(tmp_path, call, code, disconnect, follow):
    rt = load(tmp_path, f"kumo.on('ev', function() {call} end)")
    with pytest.raises(RejectError) as info:
        PolicyEvents(rt).call("ev")
    assert (info.value.code, info.value.reply_text, info.value.disconnect) == (
        code,
        "no",
        disconnect,
    )
    assert info.value.follow_with_421 is follow


@pytest.mark.parametrize(
    "call",
    [
        "kumo.reject('x', 'no')",
        "kumo.reject(5.5, 'no')",
        "kumo.reject(550)",
        "kumo.disconnect(1, 'x', 'bad')",
    ],
)
def test_reject_argument_errors_are_policy_errors(tmp_path, call):
    rt = load(tmp_path, f"kumo.on('ev', function()\n  {call}\nend)")
    with pytest.raises(PolicyError) as info:
        PolicyEvents(rt).call("ev")
    assert not isinstance(info.value, RejectError)
    assert info.value.location == "init.lua:2"


def test_from_lua_list_dict_and_empty_rules(tmp_path):
    rt = load(
        tmp_path,
        """
        kumo.on('v', function()
          return {list = {1, 2, 3}, sparse = {[1] = 'a', [3] = 'c'}, empty = {},
                  nested = {{x = true}}, float = 1.5, [7] = 'int key'}
        end)
        """,
    )
    assert PolicyEvents(rt).call("v") == {
        "list": [1, 2, 3],
        "sparse": {"1": "a", "3": "c"},
        "empty": {},
        "nested": [{"x": True}],
        "float": 1.5,
        "7": "int key",
    }
    cfg = PolicyEvents(rt).call("v", config=True)
    assert isinstance(cfg["empty"], EmptyTable)
    assert cfg["empty"] == []
    assert cfg["empty"].get("x", 5) == 5
    assert dict(cfg["empty"]) == {}


def test_to_lua_round_trip(tmp_path):
    rt = load(tmp_path, "kumo.on('echo', function(v) return v end)")
    value = {"a": [1, 2.5, "x", True], "b": {"c": None, "d": "é"}, "big": 2**70}
    out = PolicyEvents(rt).call("echo", value)
    assert out == {"a": [1, 2.5, "x", True], "b": {"d": "é"}, "big": float(2**70)}


def test_handler_returning_a_function_is_a_policy_error(tmp_path):
    rt = load(tmp_path, "kumo.on('f', function() return print end)")
    with pytest.raises(PolicyError, match="cannot use the handler's result"):
        PolicyEvents(rt).call("f")


def test_handler_returning_invalid_utf8_is_a_policy_error(tmp_path):
    rt = load(tmp_path, "kumo.on('f', function() return '\\xff' end)")
    with pytest.raises(PolicyError, match="not UTF-8"):
        PolicyEvents(rt).call("f")
