"""kumo.dns.lookup_addr, lookup_ptr, lookup_txt, reverse_ip and ptr_host (kumoq.lua.dns_api).

Real Lua, the real MxCache over the zone-text TestResolver (no network)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from kumoq.dns.mx_cache import MxCache
from kumoq.dns.resolver import DnsStatus, TestResolver
from kumoq.errors import PolicyError
from kumoq.harness_mode import HarnessResolver
from kumoq.lua import PolicyRuntime
from kumoq.lua.dns_api import ptr_host, reverse_ip

ZONE = """
$ORIGIN test.
$TTL 300
both         A     192.0.2.1
both         AAAA  2001:db8::1
v6only       AAAA  2001:db8::2
text         TXT   "v=spf1 " "-all"
text         TXT   "second"
$ORIGIN 2.0.192.in-addr.arpa.
1            PTR   both.test.
1            PTR   alias.test.
"""

POLICY = """
local kumo = require 'kumo'
kumo.on('addr', function(name, strategy)
  local addrs = kumo.dns.lookup_addr(name, nil, strategy)  -- not a tail call: the line is kept
  return addrs
end)
kumo.on('ptr', function(ip) return kumo.dns.lookup_ptr(ip) end)
kumo.on('txt', function(name) return kumo.dns.lookup_txt(name) end)
kumo.on('caught', function(name)
  local ok, err = pcall(kumo.dns.lookup_addr, name)
  return { ok, tostring(err) }
end)
kumo.on('named_resolver', function() return kumo.dns.lookup_addr('both.test', 'other') end)
kumo.on('strings', function(ip) return { kumo.dns.reverse_ip(ip), kumo.dns.ptr_host(ip) } end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  kumo.dns.lookup_addr(domain)
  return kumo.make_queue_config {}
end)
"""


def load(tmp_path: Path, dns: bool = True) -> tuple[PolicyRuntime, TestResolver]:
    path = tmp_path / "init.lua"
    path.write_text(textwrap.dedent(POLICY))
    rt = PolicyRuntime(path)
    rt.fire_init()
    resolver = TestResolver.from_zone_text(ZONE)
    if dns:
        rt.waits.dns = MxCache(resolver)
    return rt, resolver


async def test_lookup_addr_answers_both_families_by_default(tmp_path: Path) -> None:
    rt, resolver = load(tmp_path)
    assert await rt.invoke_async("addr", "vv", "both.test", None) == ["192.0.2.1", "2001:db8::1"]
    assert await rt.invoke_async("addr", "vv", "both.test", "Ipv4Only") == ["192.0.2.1"]
    assert await rt.invoke_async("addr", "vv", "v6only.test", "Ipv4ThenIpv6") == ["2001:db8::2"]
    # Address literals need no DNS.
    assert await rt.invoke_async("addr", "vv", "[192.0.2.9]", None) == ["192.0.2.9"]
    assert await rt.invoke_async("addr", "vv", "[IPv6:2001:db8::9]", None) == ["2001:db8::9"]
    assert await rt.invoke_async("addr", "vv", "192.0.2.8", None) == ["192.0.2.8"]
    # Answers are cached for their TTL.
    asked = len(resolver.queries)
    assert await rt.invoke_async("addr", "vv", "both.test", None) == ["192.0.2.1", "2001:db8::1"]
    assert len(resolver.queries) == asked


async def test_a_name_without_addresses_is_an_error_the_policy_can_catch(
    tmp_path: Path,
) -> None:
    rt, _ = load(tmp_path)
    ok, err = await rt.invoke_async("caught", "v", "missing.test")
    assert ok is False
    assert "kumo.dns.lookup_addr: NXDOMAIN: missing.test" in err
    with pytest.raises(PolicyError, match=r"init\.lua:4: kumo\.dns\.lookup_addr: NXDOMAIN"):
        await rt.invoke_async("addr", "vv", "missing.test", None)
    with pytest.raises(PolicyError, match="unknown ip lookup strategy 'Sideways'"):
        await rt.invoke_async("addr", "vv", "both.test", "Sideways")
    with pytest.raises(PolicyError, match="no resolver named 'other'"):
        await rt.invoke_async("named_resolver", "")


async def test_lookup_ptr_and_txt(tmp_path: Path) -> None:
    rt, _ = load(tmp_path)
    assert sorted(await rt.invoke_async("ptr", "v", "192.0.2.1")) == ["alias.test.", "both.test."]
    assert not await rt.invoke_async("ptr", "v", "192.0.2.200")  # "the table may be empty"
    assert sorted(await rt.invoke_async("txt", "v", "text.test")) == ["second", "v=spf1 -all"]
    with pytest.raises(PolicyError, match="'not-an-ip' is not an IP address"):
        await rt.invoke_async("ptr", "v", "not-an-ip")
    with pytest.raises(PolicyError, match=r"kumo\.dns\.lookup_txt: NXDOMAIN"):
        await rt.invoke_async("txt", "v", "missing.test")


async def test_without_dns_or_in_a_synchronous_event_the_lookups_fail(tmp_path: Path) -> None:
    rt, _ = load(tmp_path, dns=False)
    with pytest.raises(PolicyError, match="DNS is not available before init has completed"):
        await rt.invoke_async("addr", "vv", "both.test", None)
    rt, _ = load(tmp_path)
    with pytest.raises(PolicyError, match=r"kumo\.dns\.lookup_addr: cannot wait in this event"):
        rt.invoke("get_queue_config", "vvvv", "both.test", None, None, None)


def test_reverse_ip_and_ptr_host(tmp_path: Path) -> None:
    rt, _ = load(tmp_path)
    assert rt.invoke("strings", "v", "127.0.0.1") == ["1.0.0.127", "1.0.0.127.in-addr.arpa"]
    nibbles = ".".join("1" + "0" * 31)
    assert reverse_ip("::1") == nibbles
    assert ptr_host("::1") == f"{nibbles}.ip6.arpa"
    with pytest.raises(PolicyError, match=r"kumo\.dns\.reverse_ip: 'x' is not an IP address"):
        rt.invoke("strings", "v", "x")


async def test_the_harness_resolver_answers_ptr_and_txt_from_the_policy_zones() -> None:
    resolver = HarnessResolver([ZONE])
    answer = await resolver.resolve_records("1.2.0.192.in-addr.arpa", "PTR")
    assert sorted(answer.records) == ["alias.test.", "both.test."]
    empty = await HarnessResolver().resolve_records("text.test", "TXT")
    assert empty.status is DnsStatus.NXDOMAIN
