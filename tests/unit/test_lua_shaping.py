"""kumo.shaping.load through real Lua: TOML and JSON files merged in order, the shaping object's
methods, mx_rollup through kumo.dns.lookup_mx (the zone-text TestResolver), a policy in the
style of KumoMTA's shaping helper, and errors that name the file, the domain and the key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from kumoq.config.egress import EgressPathConfig
from kumoq.config.values import LimitSpec
from kumoq.declarations import BUILDERS
from kumoq.dns.mx_cache import MxCache
from kumoq.dns.resolver import TestResolver
from kumoq.errors import PolicyError, PolicyWouldBlock
from kumoq.lua import PolicyEvents, PolicyRuntime

ZONE = """
$ORIGIN test.
$TTL 300
hosted     MX 10 mx1.provider.test.
hosted     MX 20 mx2.provider.test.
vanity     MX 10 mx1.provider.test.
vanity     MX 20 mx2.provider.test.
nullmx     MX 0 .
"""
SITE = "(mx1|mx2).provider.test"

BASE_TOML = """
["default"]
connection_limit = 10
max_message_rate = "100/s"

["hosted.test"]
connection_limit = 4
max_deliveries_per_connection = 50

["flat.test"]
mx_rollup = false
connection_limit = 3

["flat.test".sources."ip-1"]
connection_limit = 1

[["flat.test".automation]]
regex = "4\\\\.7\\\\.1"
action = "Suspend"
duration = "1h"
"""

LOCAL_JSON = """{
  // our own overrides, after the base file
  "flat.test": {"mx_rollup": false, "max_message_rate": "5/m"},
  "other.test": {"mx_rollup": false, "replace_base": true, "smtp_port": 2525}
}"""


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def runtime(tmp_path: Path, policy: str, dns: bool = False) -> PolicyRuntime:
    path = tmp_path / "init.lua"
    path.write_text(textwrap.dedent(policy))
    rt = PolicyRuntime(path, builders=BUILDERS)
    if dns:
        rt.fire_init()
        rt.waits.dns = MxCache(TestResolver.from_zone_text(ZONE), nxdomain_bounces=True)
    return rt


def files_policy(tmp_path: Path, extra: str = "") -> str:
    base = write(tmp_path, "shaping.toml", BASE_TOML)
    local = write(tmp_path, "local.json", LOCAL_JSON)
    return f"""
    local FILES = {{ '{base}', '{local}' }}
    kumo.on('t', function(domain, source, site)
      local s = kumo.shaping.load(FILES {extra})
      return {{
        config = s:get_egress_path_config(domain, source, site),
        warnings = s:get_warnings(),
        errors = s:get_errors(),
        sources = s:get_referenced_sources(),
        hash = s:hash(),
      }}
    end)
    """


def test_toml_and_json_files_merge_in_order(tmp_path: Path) -> None:
    ev = PolicyEvents(runtime(tmp_path, files_policy(tmp_path)))
    got = ev.call("t", "flat.test", "ip-2", "mx.flat.test")
    assert got["config"] == {"connection_limit": 3, "max_message_rate": "5/m"}
    assert ev.call("t", "flat.test", "ip-1", "x")["config"]["connection_limit"] == 1
    assert ev.call("t", "other.test", "ip-1", "x")["config"] == {"smtp_port": 2525}
    assert got["warnings"] == [
        f"{tmp_path}/shaping.toml: domain 'flat.test': ignoring 1 automation rule(s): kumoq "
        "has no Traffic Shaping Automation"
    ]
    assert got["errors"] == {} or got["errors"] == []
    assert got["sources"] == {"ip-1": ["domain:flat.test"]}
    assert len(got["hash"]) == 64


async def test_mx_rollup_keys_an_entry_by_the_site_of_its_mx(tmp_path: Path) -> None:
    policy = files_policy(tmp_path, ", { null_mx = 'Warn', dns_fail = 'Warn' }")
    rt = runtime(tmp_path, policy, dns=True)
    got = await rt.invoke_async("t", "vvv", "vanity.test", "ip-1", SITE)
    assert got["config"] == {
        "connection_limit": 4,
        "max_message_rate": "100/s",
        "max_deliveries_per_connection": 50,
    }
    # the domain itself, on another site, gets only the default
    got = await rt.invoke_async("t", "vvv", "hosted.test", "ip-1", "elsewhere")
    assert got["config"] == {"connection_limit": 10, "max_message_rate": "100/s"}


async def test_a_null_mx_or_a_failed_lookup_drops_the_entry(tmp_path: Path) -> None:
    shaping = write(
        tmp_path,
        "s.toml",
        '["nullmx.test"]\nconnection_limit = 1\n["missing.test"]\nconnection_limit = 2\n',
    )
    policy = f"""
    kumo.on('t', function()
      local s = kumo.shaping.load({{ '{shaping}' }}, {{ null_mx = 'Warn', dns_fail = 'Error' }})
      return {{ s:get_warnings(), s:get_errors() }}
    end)
    """
    rt = runtime(tmp_path, policy, dns=True)
    warnings, errors = await rt.invoke_async("t", "")
    assert warnings == [
        "domain nullmx.test has a NULL MX and cannot be used with mx_rollup=true. "
        "Ignoring the shaping config for that domain."
    ]
    assert len(errors) == 1
    assert errors[0].startswith("error resolving MX for missing.test: ")


HELPER_STYLE = """
local FILES = {{ '{base}', '{local}' }}
local function load_shaping(files)
  local s = kumo.shaping.load(files)
  for _, e in ipairs(s:get_errors()) do kumo.log_error(e) end
  for _, w in ipairs(s:get_warnings()) do kumo.log_warn(w) end
  return s
end
local cached = kumo.memoize(load_shaping, {{
  name = 'shaping_data', ttl = '1 minute', capacity = 16, invalidate_with_epoch = true,
}})
kumo.on('get_egress_path_config', function(domain, source, site)
  local params = cached(FILES):get_egress_path_config(domain, source, site)
  if not params.refresh_strategy then params.refresh_strategy = 'Epoch' end
  return kumo.make_egress_path(params)
end)
"""


def test_a_helper_style_policy_builds_the_egress_path(tmp_path: Path) -> None:
    base = write(tmp_path, "shaping.toml", BASE_TOML)
    local = write(tmp_path, "local.json", LOCAL_JSON)
    ev = PolicyEvents(runtime(tmp_path, HELPER_STYLE.format(base=base, local=local)))
    path = ev.call("get_egress_path_config", "flat.test", "ip-1", "x")
    assert isinstance(path, EgressPathConfig)
    assert path.connection_limit == LimitSpec(1)
    assert str(path.max_message_rate) == "5/m"
    assert path.refresh_strategy.value == "Epoch"
    again = ev.call("get_egress_path_config", "flat.test", "ip-2", "x")
    assert again.connection_limit == LimitSpec(3)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "bad.toml",
            '["d.test"]\nconection_limit = 3\n',
            "bad.toml: domain 'd.test': unknown key 'conection_limit'",
        ),
        (
            "bad.json",
            '{"d.test": {"sources": {"ip-1": {"max_message_rate": "fast"}}}}',
            "bad.json: domain 'd.test': source 'ip-1': max_message_rate",
        ),
        ("broken.toml", '["d.test"\n', "kumo.shaping.load: parsing toml from file"),
        ("broken.json", '{"d.test": }', "kumo.shaping.load: parsing json from file"),
    ],
)
def test_errors_name_the_file_and_the_key(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = write(tmp_path, name, text)
    policy = f"kumo.on('t', function()\n  local s = kumo.shaping.load {{ '{path}' }}\n"
    policy += "  return s\nend)\n"
    with pytest.raises(PolicyError) as info:
        PolicyEvents(runtime(tmp_path, policy)).call("t")
    assert message in str(info.value)
    assert "init.lua:2" in str(info.value)
    assert name in str(info.value)


def test_a_missing_file_is_an_error_in_the_list_and_options_are_checked(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    policy = f"""
    kumo.on('t', function() return kumo.shaping.load({{ '{missing}' }}):get_errors() end)
    kumo.on('ignored', function()
      return kumo.shaping.load({{ '{missing}' }}, {{ local_load = 'Ignore' }}):get_errors()
    end)
    kumo.on('remote', function()
      local s = kumo.shaping.load({{ 'https://x.test/s.toml' }}, {{ skip_remote = true }})
      return s:get_warnings()
    end)
    kumo.on('bad', function() return kumo.shaping.load({{}}, {{ dns_fail = 'Loud' }}) end)
    kumo.on('method', function() return kumo.shaping.load({{}}):match_rules({{}}) end)
    """
    ev = PolicyEvents(runtime(tmp_path, policy))
    assert ev.call("t") == [
        f"local shaping source {missing} error: loading data from file {missing}: "
        "No such file or directory"
    ]
    assert ev.call("ignored") in ([], {})
    skipped = "Ignoring https://x.test/s.toml because skip_remote is set to true"
    assert ev.call("remote") == [skipped]
    with pytest.raises(PolicyError, match=r"options\.dns_fail: expected one of"):
        ev.call("bad")
    with pytest.raises(PolicyError, match="shaping:match_rules is not available in kumoq"):
        ev.call("method")


async def test_a_synchronous_call_fetches_every_rolled_up_domain_at_once(tmp_path: Path) -> None:
    # get_egress_path_config is called synchronously: the first uncached answer stops the call
    # (PolicyWouldBlock); by then every other domain's lookup has started, so one wait is enough
    zone = "$ORIGIN test.\n$TTL 300\n" + "".join(
        f"d{i} MX 10 mx{i}.provider.test.\n" for i in range(12)
    )
    shaping = write(
        tmp_path,
        "s.toml",
        "".join(f'["d{i}.test"]\nconnection_limit = {i + 1}\n' for i in range(12)),
    )
    policy = f"""
    kumo.on('get_egress_path_config', function(domain, source, site)
      local s = kumo.shaping.load({{ '{shaping}' }}, {{ dns_fail = 'Error' }})
      assert(#s:get_errors() == 0, 'errors')
      return kumo.make_egress_path(s:get_egress_path_config(domain, source, site))
    end)
    """
    rt = runtime(tmp_path, policy)
    rt.fire_init()
    resolver = TestResolver.from_zone_text(zone)
    rt.waits.dns = MxCache(resolver, nxdomain_bounces=True)
    ev = PolicyEvents(rt)
    waits = 0
    path = None
    for _ in range(12):
        try:
            path = ev.call("get_egress_path_config", "d7.test", "ip-1", "mx7.provider.test")
            break
        except PolicyWouldBlock as wait:
            waits += 1
            await wait.wait()
    assert isinstance(path, EgressPathConfig)
    assert path.connection_limit == LimitSpec(8)
    assert 1 <= waits <= 2  # one by one it would take 12
