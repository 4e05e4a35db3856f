"""The ``kumo.*`` fields a policy names that kumoq lacks are reported at load (issue 14:
"an unknown ``kumo.*`` field [is] reported at load, not silently accepted"), with real Lua."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from kumoq.declarations import load_policy
from kumoq.lua.field_check import strip_comments_and_strings, unknown_references
from kumoq.validation import validate_policy
from tests.unit.lua_kumo_support import load

FIELDS = {
    "on": None,
    "make_egress_path": None,
    "dns": frozenset({"lookup_mx", "lookup_txt"}),
    "serde": frozenset({"json_load"}),
}


def test_comments_and_strings_are_blanked_and_lines_kept() -> None:
    src = 'a = \'kumo.x\' -- kumo.y\n--[[ kumo.z\n]] b = [==[ kumo.w ]==] c = "\\"kumo.v"\nkumo.on'
    out = strip_comments_and_strings(src)
    assert out.count("\n") == src.count("\n")
    assert "kumo." not in out.replace("kumo.on", "")
    assert out.endswith("kumo.on")


def test_unknown_names_are_reported_once_at_their_first_line_with_a_hint() -> None:
    src = """local kumo = require 'kumo'
kumo.on('get_egress_path_config', function()
  return kumo.make_egres_path {}
end)
kumo.on('x', function() kumo.dns.lookup_mxx('a'); kumo.make_egres_path {} end)
local t = kumo.serde.json_load('f') -- kumo.nothing_here
"""
    found = unknown_references(src, "init.lua", FIELDS)
    assert found == [
        (
            "init.lua:3",
            "kumo.make_egres_path is not available in kumoq (did you mean "
            "'kumo.make_egress_path'?): this line fails when it runs",
        ),
        (
            "init.lua:5",
            "kumo.dns.lookup_mxx is not available in kumoq (did you mean "
            "'kumo.dns.lookup_mx'?): this line fails when it runs",
        ),
    ]


def test_what_the_policy_defines_itself_is_its_own() -> None:
    src = """kumo.my_helper = function() return 1 end
function kumo.dns.my_lookup() end
kumo.on('x', function() return kumo.my_helper() + kumo.dns.my_lookup() end)
if kumo.my_helper == nil then end
"""
    assert unknown_references(src, "init.lua", FIELDS) == []


def test_the_real_kumo_table_knows_every_documented_name_a_policy_uses(tmp_path: Path) -> None:
    runtime = load(
        tmp_path,
        """
        local kumo = require 'kumo'
        kumo.on('init', function()
          kumo.start_esmtp_listener { listen = '127.0.0.1:0' }
          kumo.configure_local_logs { log_dir = '/tmp' }
        end)
        kumo.on('get_queue_config', function()
          local t = kumo.serde.json_parse('{}')
          local r = kumo.regex.compile('x')
          return kumo.make_queue_config { retry_interval = kumo.time.parse_duration('1m') }
        end)
        kumo.on('x', function() return kumo.dns.lookup_txt('a'), kumo.no_such_thing end)
        """,
    )
    assert runtime.unknown_fields == [
        (
            "init.lua:12",
            "kumo.no_such_thing is not available in kumoq: this line fails when it runs",
        ),
    ]


def test_serve_logs_the_warning_and_validate_reports_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    policy = tmp_path / "init.lua"
    policy.write_text(
        "local kumo = require 'kumo'\n"
        "kumo.on('init', function()\n"
        "  kumo.define_spool { name = 'data', path = 'spool/data' }\n"
        "  kumo.define_spool { name = 'meta', path = 'spool/meta' }\n"
        "end)\n"
        "kumo.on('smtp_server_message_received', function(msg)\n"
        "  kumo.sete_meta(msg)\n"
        "end)\n"
    )
    with caplog.at_level(logging.WARNING):
        load_policy(policy, serving=True)
    assert "init.lua:7: kumo.sete_meta is not available in kumoq" in caplog.text
    report = validate_policy(policy, ["example.com"])
    warnings = [f for f in report.findings if f.severity == "warning"]
    assert any("kumo.sete_meta is not available" in f.message for f in warnings), warnings
