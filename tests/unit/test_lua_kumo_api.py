"""kumoq.lua.kumo_api: json, logging, declarations, make_* builders and opaque results."""

from __future__ import annotations

import json
import logging
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kumoq.config.queue import QueueConfig
from kumoq.config.values import build, parse_str, parse_str_list
from kumoq.errors import ConfigError, PolicyError
from kumoq.lua import EmptyTable, PolicyEvents, PolicyRuntime


def load(tmp_path: Path, src: str, **kw: Any) -> PolicyRuntime:
    path = tmp_path / "init.lua"
    path.write_text(textwrap.dedent(src))
    return PolicyRuntime(path, **kw)


def call(tmp_path: Path, body: str, *args: object) -> Any:
    rt = load(tmp_path, f"kumo.on('t', function(...)\n{body}\nend)\n")
    return PolicyEvents(rt).call("t", *args)


@dataclass(frozen=True, slots=True, kw_only=True)
class FakeListener:
    listen: str
    relay_hosts: tuple[str, ...] = ()

    @classmethod
    def from_mapping(cls, mapping):
        return build(
            cls,
            "start_esmtp_listener",
            mapping,
            {"listen": parse_str, "relay_hosts": parse_str_list},
        )


# -- json -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lua", "text"),
    [
        ("{b = 1, a = {1, 2, 3}}", '{"a":[1,2,3],"b":1}'),
        ("{}", "{}"),
        ("{x = {}}", '{"x":{}}'),
        ("'héllo'", '"héllo"'),
        ("1.5", "1.5"),
        ("true", "true"),
        ("{1, 'two', false}", '[1,"two",false]'),
    ],
)
def test_json_encode(tmp_path, lua, text):
    assert call(tmp_path, f"return kumo.json_encode({lua})") == text


def test_json_encode_pretty(tmp_path):
    assert json.loads(call(tmp_path, "return kumo.json_encode_pretty({a = {1}})")) == {"a": [1]}
    assert "\n" in call(tmp_path, "return kumo.json_encode_pretty({a = {1}})")


def test_json_parse_and_round_trip(tmp_path):
    doc = {"a": [1, 2.5, "x", True, False], "b": {"c": "ü", "d": []}, "n": 12345678901}
    out = call(tmp_path, "return kumo.json_encode(kumo.json_parse(...))", json.dumps(doc))
    back = json.loads(out)
    assert back == {**doc, "b": {"c": "ü", "d": {}}}  # an empty array comes back as a table


def test_json_parse_null_becomes_nil(tmp_path):
    assert (
        call(tmp_path, 'local v = kumo.json_parse(\'{"a":null,"b":1}\') return v.a == nil') is True
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("kumo.json_parse('{nope')", "json_parse: "),
        ("kumo.json_parse(5)", "json_parse: expected a string"),
        ("kumo.json_encode({f = print})", "json_encode: cannot convert a Lua function"),
        ("kumo.json_encode(0/0)", "json_encode: "),
        ("kumo.json_encode('\\xff')", "not valid UTF-8"),
    ],
)
def test_json_errors_name_the_policy_line(tmp_path, body, message):
    with pytest.raises(PolicyError, match=message) as info:
        call(tmp_path, f"local x = 1\n{body}")
    assert info.value.location == "init.lua:3"


# -- logging ----------------------------------------------------------------------------------


def test_log_functions_go_to_the_kumoq_policy_logger(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="kumoq.policy")
    call(
        tmp_path,
        "kumo.log_info('hello', 1, true, nil) kumo.log_warn('w') kumo.log_error('e\\xff')",
    )
    records = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert records == [
        ("kumoq.policy", logging.INFO, "hello 1 true nil"),
        ("kumoq.policy", logging.WARNING, "w"),
        ("kumoq.policy", logging.ERROR, "e?"),
    ]


# -- declarations -------------------------------------------------------------------------------


def test_declarations_are_built_and_collected_in_order(tmp_path):
    seen = []
    rt = load(
        tmp_path,
        """
        kumo.on('init', function()
          kumo.start_esmtp_listener { listen = '127.0.0.1:25', relay_hosts = {} }
          kumo.start_esmtp_listener { listen = '127.0.0.1:26', relay_hosts = {'10.0.0.1'} }
          kumo.start_http_listener { listen = '127.0.0.1:8000' }
          kumo.define_spool { name = 'data', path = '/tmp/x' }
          kumo.configure_local_logs { log_dir = '/tmp/logs', meta = {}, per_record = {} }
        end)
        """,
        builders={"start_esmtp_listener": FakeListener.from_mapping},
        declare=lambda kind, value: seen.append(kind),
    )
    decl = rt.fire_init()
    assert decl.esmtp_listeners == [
        FakeListener(listen="127.0.0.1:25"),
        FakeListener(listen="127.0.0.1:26", relay_hosts=("10.0.0.1",)),
    ]
    assert decl.http_listeners == [{"listen": "127.0.0.1:8000"}]  # no builder: the plain dict
    assert decl.spools == [{"name": "data", "path": "/tmp/x"}]
    (logs,) = decl.local_logs
    assert isinstance(logs["meta"], EmptyTable)
    assert isinstance(logs["per_record"], Mapping)
    assert seen == [
        "start_esmtp_listener",
        "start_esmtp_listener",
        "start_http_listener",
        "define_spool",
        "configure_local_logs",
    ]
    assert rt.declarations is decl


def test_declaration_outside_init_is_an_error(tmp_path):
    with pytest.raises(PolicyError, match="may only be called from inside the init") as info:
        load(tmp_path, "local x = 1\nkumo.define_spool { name = 'data' }\n")
    assert info.value.location == "init.lua:2"


def test_declaration_builder_error_names_line_key_and_allowed_keys(tmp_path):
    rt = load(
        tmp_path,
        """\
        kumo.on('init', function()
          kumo.start_esmtp_listener {
            listen = '127.0.0.1:25', relay_host = {},
          }
        end)
        """,
        builders={"start_esmtp_listener": FakeListener.from_mapping},
    )
    with pytest.raises(PolicyError) as info:
        rt.fire_init()
    assert info.value.location == "init.lua:2"
    assert str(info.value) == (
        "init.lua:2: start_esmtp_listener: unknown key 'relay_host'; "
        "allowed keys are: listen, relay_hosts"
    )


def test_declare_callback_errors_become_policy_errors(tmp_path):
    def refuse(kind, value):
        raise ConfigError("duplicate listener 127.0.0.1:25")

    rt = load(
        tmp_path,
        "kumo.on('init', function()\n  kumo.start_http_listener { listen = 'x' }\nend)",
        declare=refuse,
    )
    with pytest.raises(PolicyError, match="start_http_listener: duplicate listener") as info:
        rt.fire_init()
    assert info.value.location == "init.lua:2"


# -- make_* ---------------------------------------------------------------------------------------


def test_make_queue_config_round_trips_the_same_frozen_object(tmp_path):
    rt = load(
        tmp_path,
        """
        local QC = kumo.make_queue_config { retry_interval = '5 minutes', max_age = '1h' }
        kumo.on('get_queue_config', function() return QC end)
        kumo.on('show', function() return {tostring(QC), getmetatable(QC)} end)
        """,
    )
    ev = PolicyEvents(rt)
    first = ev.get_queue_config("a.example", None, None, None)
    assert isinstance(first, QueueConfig)
    assert (first.retry_interval, first.max_age) == (300.0, 3600.0)
    assert ev.get_queue_config("b.example", None, None, None) is first
    assert ev.call("show") == ["make_queue_config", "make_queue_config"]


def test_unknown_make_queue_config_key_names_key_allowed_keys_and_line(tmp_path):
    rt = load(
        tmp_path,
        """\
        kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
          return kumo.make_queue_config {
            retry_intervl = '5m',
          }
        end)
        """,
    )
    with pytest.raises(PolicyError) as info:
        PolicyEvents(rt).get_queue_config("a.example", None, None, None)
    message = str(info.value)
    assert info.value.location == "init.lua:2"
    assert message.startswith("init.lua:2: make_queue_config: unknown key 'retry_intervl'; ")
    assert "allowed keys are: dead_letter_retention, egress_pool, max_age" in message
    assert "retry_interval" in message


def test_make_error_in_a_non_tail_call_and_after_a_previous_error(tmp_path):
    rt = load(
        tmp_path,
        """\
        kumo.on('get_queue_config', function(domain)
          if domain == 'ok.example' then return kumo.make_queue_config {} end
          local q = kumo.make_queue_config { max_age = 'soon' }
          return q
        end)
        """,
    )
    ev = PolicyEvents(rt)
    for _ in range(2):  # the callable keeps working after it raised
        with pytest.raises(PolicyError, match="max_age: invalid duration 'soon'") as info:
            ev.get_queue_config("bad.example", None, None, None)
        assert info.value.location == "init.lua:3"
        assert isinstance(ev.get_queue_config("ok.example", None, None, None), QueueConfig)


def test_make_queue_config_nested_empty_tables(tmp_path):
    rt = load(
        tmp_path,
        """
        kumo.on('get_queue_config', function()
          return kumo.make_queue_config { protocol = { smtp = {} }, shrink_policy = {} }
        end)
        """,
    )
    qc = PolicyEvents(rt).get_queue_config("a.example", None, None, None)
    assert qc is not None
    assert qc.shrink_policy == ()


def test_get_queue_config_accepts_a_plain_table(tmp_path):
    rt = load(tmp_path, "kumo.on('get_queue_config', function() return {max_age = 60} end)")
    qc = PolicyEvents(rt).get_queue_config("a.example", None, None, None)
    assert qc is not None
    assert qc.max_age == 60.0


def test_get_queue_config_rejects_other_results(tmp_path):
    rt = load(
        tmp_path,
        """
        kumo.on('get_queue_config', function(d)
          if d == 'pool.example' then return kumo.make_egress_pool { name = 'p' } end
          if d == 'bad.example' then return {retry_intervl = 1} end
          return 'text'
        end)
        """,
    )
    ev = PolicyEvents(rt)
    with pytest.raises(PolicyError, match=r"must return kumo\.make_queue_config"):
        ev.get_queue_config("pool.example", None, None, None)
    with pytest.raises(PolicyError, match="get_queue_config: make_queue_config: unknown key"):
        ev.get_queue_config("bad.example", None, None, None)
    with pytest.raises(PolicyError, match=r"must return kumo\.make_queue_config"):
        ev.get_queue_config("text.example", None, None, None)


def test_make_egress_functions_use_injected_builders(tmp_path):
    rt = load(
        tmp_path,
        """
        kumo.on('get_egress_pool', function(name)
          return kumo.make_egress_pool { name = name, entries = {} }
        end)
        kumo.on('get_egress_source', function(name)
          return kumo.make_egress_source { name = name }
        end)
        kumo.on('get_egress_path_config', function(domain, source, site)
          return kumo.make_egress_path { connection_limit = 3 }
        end)
        """,
        builders={
            "make_egress_pool": lambda m: ("pool", m["name"], list(m["entries"])),
            "make_egress_source": lambda m: ("source", m["name"]),
            "make_egress_path": lambda m: ("path", m["connection_limit"]),
        },
    )
    ev = PolicyEvents(rt)
    assert ev.call("get_egress_pool", "p1") == ("pool", "p1", [])
    assert ev.call("get_egress_source", "s1") == ("source", "s1")
    assert ev.call("get_egress_path_config", "d", "s", "site") == ("path", 3)


def test_opaque_results_are_read_only_and_have_no_fields(tmp_path):
    rt = load(
        tmp_path, "QC = kumo.make_queue_config {}\nkumo.on('t', function(code) load(code)() end)"
    )
    ev = PolicyEvents(rt)
    with pytest.raises(PolicyError, match="opaque; it has no field retry_interval"):
        ev.call("t", "return QC.retry_interval")
    with pytest.raises(PolicyError, match="read-only"):
        ev.call("t", "QC.max_age = 5")


def test_opaque_handles_are_released_after_garbage_collection(tmp_path):
    rt = load(
        tmp_path,
        """
        kumo.on('get_queue_config', function() return kumo.make_queue_config {} end)
        kumo.on('gc', function() collectgarbage() collectgarbage() end)
        """,
    )
    ev = PolicyEvents(rt)
    for _ in range(200):
        ev.get_queue_config("a.example", None, None, None)
    ev.call("gc")
    ev.get_queue_config("a.example", None, None, None)  # releases what the finalizers queued
    assert len(rt.opaque) <= 2


def test_make_argument_must_be_a_table(tmp_path):
    with pytest.raises(
        PolicyError, match="make_queue_config: expected a table, got string"
    ) as info:
        load(tmp_path, "\nkumo.make_queue_config 'x'\n")
    assert info.value.location == "init.lua:2"


@pytest.mark.parametrize("code", [250, 999, 399])
def test_reject_with_a_code_that_is_not_4xx_or_5xx_is_a_policy_error(tmp_path, code):
    path = tmp_path / "init.lua"
    path.write_text(
        f"local kumo = require 'kumo'\nkumo.on('x', function() kumo.reject({code}, 'no') end)\n"
    )
    events = PolicyEvents(PolicyRuntime(path))
    with pytest.raises(PolicyError) as info:
        events.call("x")
    assert type(info.value) is PolicyError  # not a RejectError: the policy is wrong
    assert "4xx or 5xx" in str(info.value)
    assert "init.lua:2" in str(info.value)
