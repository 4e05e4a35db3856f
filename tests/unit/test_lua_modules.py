"""Where ``require`` finds modules (the policy's directory, ``KUMOQ_LUA_PATH``, KumoMTA's
install locations) and the strict ``kumo`` table (an unknown field is an error at its line)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from kumoq.errors import PolicyError
from tests.unit.lua_kumo_support import call, load

HELPER = """\
local mod = {}
local kumo = require 'kumo'

function mod.where()
  return 'WHERE'
end

function mod.fail()
  error('helper failed')
end

return mod
"""


def helper(root: Path, module: str, where: str) -> Path:
    """Write a helper module ``module`` (dots are directories) under ``root``."""
    path = root.joinpath(*module.split(".")).with_suffix(".lua")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HELPER.replace("WHERE", where))
    return path


def where(tmp_path: Path, module: str) -> str:
    return str(call(tmp_path, f"return require('{module}').where()"))


def test_kumomta_install_locations_are_on_the_search_path(tmp_path):
    path = call(tmp_path, "return package.path")
    entries = path.split(";")
    policy_dir = str(tmp_path.resolve())
    assert entries[:2] == [f"{policy_dir}/?.lua", f"{policy_dir}/?/init.lua"]
    kumomta = [
        "/opt/kumomta/share/?.lua",
        "/opt/kumomta/share/?/init.lua",
        "/opt/kumomta/etc/policy/?.lua",
        "/opt/kumomta/etc/policy/?/init.lua",
    ]
    start = entries.index(kumomta[0])
    assert entries[start : start + 4] == kumomta


def test_a_helper_beside_the_policy_is_found_first(tmp_path, monkeypatch):
    extra = tmp_path / "extra"
    helper(tmp_path, "policy-extras.helper", "beside")
    helper(extra, "policy-extras.helper", "search path")
    monkeypatch.setenv("KUMOQ_LUA_PATH", str(extra))
    assert where(tmp_path, "policy-extras.helper") == "beside"


def test_kumoq_lua_path_directories_and_templates(tmp_path, monkeypatch):
    one, two = tmp_path / "one", tmp_path / "two"
    helper(one, "policy-extras.queue", "one")
    helper(two, "site.routing", "two")
    (two / "pkg").mkdir()
    (two / "pkg" / "init.lua").write_text("return { where = function() return 'init' end }")
    monkeypatch.setenv("KUMOQ_LUA_PATH", f" {one}/ ;;{two}/?.lua;{two}/?/init.lua")
    policy = tmp_path / "policy"
    policy.mkdir()
    assert where(policy, "policy-extras.queue") == "one"
    assert where(policy, "site.routing") == "two"
    assert where(policy, "pkg") == "init"


def test_a_missing_module_lists_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("KUMOQ_LUA_PATH", str(tmp_path / "extra"))
    with pytest.raises(PolicyError) as info:
        load(tmp_path, "local x = require 'policy-extras.nope'\n")
    text = str(info.value)
    assert text.startswith("init.lua:1: module 'policy-extras.nope' not found")
    assert f"{tmp_path / 'extra'}/policy-extras/nope.lua" in text
    assert "/opt/kumomta/share/policy-extras/nope.lua" in text


def test_errors_in_a_helper_name_its_file_and_line(tmp_path, monkeypatch):
    extra = tmp_path / "extra"
    path = helper(extra, "policy-extras.helper", "x")
    monkeypatch.setenv("KUMOQ_LUA_PATH", str(extra))
    policy = tmp_path / "policy"
    policy.mkdir()
    with pytest.raises(PolicyError) as info:
        call(policy, "require('policy-extras.helper').fail()")
    # a chunk outside the policy's directory is named by its path; Lua keeps the last 60
    # characters of a long one ("...extra/policy-extras/helper.lua:9")
    location = info.value.location or ""
    assert location.endswith("extra/policy-extras/helper.lua:9")
    assert str(path).endswith(location.removeprefix("...").removesuffix(":9"))
    helper(policy, "lib.inside", "x")
    with pytest.raises(PolicyError) as info:
        call(policy, "require('lib.inside').fail()")
    assert info.value.location == "lib/inside.lua:9"


# -- the strict kumo table ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "name"),
    [
        ("kumo.no_such_function()", "kumo.no_such_function"),
        ("local f = kumo.configure_accounting_db_path", "kumo.configure_accounting_db_path"),
        ("kumo.string.no_such()", "kumo.string.no_such"),
        ("kumo.dns.define_resolver('x', {})", "kumo.dns.define_resolver"),
        ("kumo.serde.toml_encode_pretty_compact({})", "kumo.serde.toml_encode_pretty_compact"),
        ("kumo.time.no_such_timer('x')", "kumo.time.no_such_timer"),
    ],
)
def test_an_unknown_kumo_field_is_an_error_naming_it_at_its_line(tmp_path, expr, name):
    with pytest.raises(PolicyError) as info:
        load(tmp_path, f"local kumo = require 'kumo'\n{expr}\n")
    assert str(info.value) == f"init.lua:2: {name} is not available in kumoq"
    assert info.value.location == "init.lua:2"


def test_an_unknown_field_in_a_handler_fails_when_the_handler_runs(tmp_path):
    with pytest.raises(PolicyError, match=r"^init.lua:3: kumo.foo is not available in kumoq$"):
        call(tmp_path, "local x = 1\nreturn kumo.foo")


def test_the_submodules_are_modules_too(tmp_path):
    src = """
    for _, name in ipairs { 'serde', 'string', 'regex', 'time', 'domain_map', 'dns' } do
      assert(require('kumo.' .. name) == kumo[name], name)
    end
    -- a policy may still add its own fields
    kumo.my_helper = function() return 42 end
    assert(kumo.my_helper() == 42)
    assert(pcall(function() return kumo.nope end) == false)
    """
    load(tmp_path, textwrap.dedent(src))
