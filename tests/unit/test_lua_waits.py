"""kumo.dns.lookup_mx: handlers that wait for DNS, awaited or answered from the MX cache.

Real Lua, the real MxCache over the zone-text TestResolver (no network)."""

from __future__ import annotations

import asyncio
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from kumoq.clock import FakeClock
from kumoq.dns.mx_cache import MxCache
from kumoq.dns.resolver import TestResolver
from kumoq.errors import PolicyError, PolicyWouldBlock
from kumoq.lua import PolicyEvents, PolicyRuntime
from kumoq.message import EnvelopeAddress

ZONE = """
$ORIGIN test.
$TTL 300
gmail        MX 5  gmail-smtp-in.l.google.com.
gmail        MX 10 alt1.gmail-smtp-in.l.google.com.
gmail        MX 20 alt2.gmail-smtp-in.l.google.com.
plain        A  127.0.0.1
nullmx       MX 0 .
"""

POLICY = """
local kumo = require 'kumo'
kumo.on('smtp_server_rcpt_to', function(addr, conn_meta)
  local ok, mx = pcall(kumo.dns.lookup_mx, addr.domain)
  if not ok then kumo.reject(550, '5.1.2 ' .. addr.domain .. ' has no mail exchanger') end
  conn_meta:set_meta('mx', mx)
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  local mx = kumo.dns.lookup_mx(domain)
  return kumo.make_queue_config { retry_interval = mx.site_name == '' and '1m' or '2m' }
end)
kumo.on('uncaught', function(domain)
  local mx = kumo.dns.lookup_mx(domain)  -- not a tail call, so the error names this line
  return mx
end)
kumo.on('in_own_coroutine', function(domain)
  local co = coroutine.wrap(function() return kumo.dns.lookup_mx(domain) end)
  return co()
end)
kumo.on('yields', function() coroutine.yield(1) end)
kumo.on('preferences', function(domain)
  local mx = kumo.dns.lookup_mx(domain)
  local prefs = {}
  for pref, hosts in pairs(mx.by_pref) do prefs[#prefs + 1] = pref .. '=' .. hosts[1] end
  table.sort(prefs)
  return {math.type(next(mx.by_pref)), mx.by_pref[20][1], table.concat(prefs, ' ')}
end)
kumo.on('bad_arg', function() return kumo.dns.lookup_mx(42) end)
"""


def load(tmp_path: Path, dns: bool = True) -> tuple[PolicyRuntime, TestResolver]:
    path = tmp_path / "init.lua"
    path.write_text(textwrap.dedent(POLICY))
    rt = PolicyRuntime(path)
    rt.fire_init()
    resolver = TestResolver.from_zone_text(ZONE)
    if dns:
        rt.waits.dns = MxCache(resolver, nxdomain_bounces=True)
    return rt, resolver


async def rcpt(ev: PolicyEvents, address: str) -> dict[str, Any]:
    conn: dict[str, Any] = {}
    await ev.smtp_server_rcpt_to(EnvelopeAddress.parse(address), conn)
    return conn


async def test_an_async_event_waits_for_the_answer(tmp_path: Path) -> None:
    rt, resolver = load(tmp_path)
    conn = await rcpt(PolicyEvents(rt), "user@gmail.test")
    assert conn["mx"] == {  # host names carry the trailing dot, as in KumoMTA
        "domain_name": "gmail.test.",
        "hosts": [
            "gmail-smtp-in.l.google.com.",
            "alt1.gmail-smtp-in.l.google.com.",
            "alt2.gmail-smtp-in.l.google.com.",
        ],
        "site_name": "(alt1|alt2)?.gmail-smtp-in.l.google.com",
        "by_pref": {
            "5": ["gmail-smtp-in.l.google.com."],
            "10": ["alt1.gmail-smtp-in.l.google.com."],
            "20": ["alt2.gmail-smtp-in.l.google.com."],
        },
        "is_domain_literal": False,
        "is_secure": False,
        "is_mx": True,
    }
    assert resolver.queries.count(("gmail.test", "MX")) == 1
    await rcpt(PolicyEvents(rt), "other@gmail.test")
    assert resolver.queries.count(("gmail.test", "MX")) == 1  # the MX cache answered


async def test_implicit_and_null_mx_are_answers_nxdomain_is_an_error(tmp_path: Path) -> None:
    rt, _ = load(tmp_path)
    ev = PolicyEvents(rt)
    implicit = (await rcpt(ev, "u@plain.test"))["mx"]
    assert implicit["hosts"] == ["plain.test."]
    assert implicit["is_mx"] is False
    assert (await rcpt(ev, "u@nullmx.test"))["mx"]["hosts"] == ["."]
    with pytest.raises(PolicyError) as info:
        await rcpt(ev, "u@missing.test")
    assert "550" in str(info.value)
    assert "missing.test has no mail exchanger" in str(info.value)


async def test_many_handlers_wait_at_once(tmp_path: Path) -> None:
    rt, _ = load(tmp_path)
    ev = PolicyEvents(rt)
    got = await asyncio.gather(*(rcpt(ev, f"u{i}@gmail.test") for i in range(20)))
    assert {c["mx"]["site_name"] for c in got} == {"(alt1|alt2)?.gmail-smtp-in.l.google.com"}
    assert rt.messages == {}
    assert rt.conns == {}


async def test_a_synchronous_event_answers_from_the_cache_or_asks_to_wait(
    tmp_path: Path,
) -> None:
    rt, resolver = load(tmp_path)
    ev = PolicyEvents(rt)
    with pytest.raises(PolicyWouldBlock) as info:
        ev.get_queue_config("nullmx.test", None, None, None)
    assert "nullmx.test" in str(info.value)
    assert resolver.queries == []
    await info.value.wait()  # fills the cache
    config = ev.get_queue_config("nullmx.test", None, None, None)
    assert config is not None
    assert config.retry_interval == 60
    assert resolver.queries == [("nullmx.test", "MX")]


async def test_errors_name_the_policy_line(tmp_path: Path) -> None:
    rt, _ = load(tmp_path)
    with pytest.raises(
        PolicyError,
        match=r"init\.lua:\d+: kumo\.dns\.lookup_mx: MX lookup for missing\.test failed: NXDOMAIN",
    ):
        await rt.invoke_async("uncaught", "v", "missing.test")
    with pytest.raises(PolicyError, match="expected a domain name, got number"):
        await rt.invoke_async("bad_arg", "")
    with pytest.raises(PolicyError, match="cannot wait for DNS here"):
        await rt.invoke_async("in_own_coroutine", "v", "gmail.test")
    with pytest.raises(PolicyError, match=r"coroutine\.yield outside a coroutine of its own"):
        await rt.invoke_async("yields", "")


async def test_before_dns_is_configured(tmp_path: Path) -> None:
    rt, _ = load(tmp_path, dns=False)
    with pytest.raises(PolicyError, match="DNS is not available before init has completed"):
        await rt.invoke_async("uncaught", "v", "gmail.test")
    with pytest.raises(PolicyError, match="DNS is not available"):
        rt.invoke("uncaught", "v", "gmail.test")


def test_init_cannot_wait(tmp_path: Path) -> None:
    path = tmp_path / "init.lua"
    path.write_text("kumo.on('init', function() kumo.dns.lookup_mx('gmail.test') end)\n")
    rt = PolicyRuntime(path)
    start = time.monotonic()
    with pytest.raises(PolicyError, match=r"init\.lua:1: .*DNS is not available"):
        rt.fire_init()
    assert time.monotonic() - start < 5


async def test_by_pref_is_keyed_by_integer_preference(tmp_path: Path) -> None:
    rt, _ = load(tmp_path)
    assert await rt.invoke_async("preferences", "v", "gmail.test") == [
        "integer",
        "alt2.gmail-smtp-in.l.google.com.",
        "10=alt1.gmail-smtp-in.l.google.com. 20=alt2.gmail-smtp-in.l.google.com. "
        "5=gmail-smtp-in.l.google.com.",
    ]


async def test_a_domain_literal_is_answered_without_dns(tmp_path: Path) -> None:
    rt, resolver = load(tmp_path)
    mx = rt.invoke("uncaught", "v", "[192.0.2.1]")  # synchronous: no wait needed
    assert mx["hosts"] == ["192.0.2.1"]
    assert mx["is_domain_literal"] is True
    assert mx["is_mx"] is False
    assert resolver.queries == []


async def test_an_answer_expired_before_the_rerun_still_serves_that_rerun(tmp_path: Path) -> None:
    """A TTL shorter than the wait: the cache no longer holds the answer when the handler runs
    again, so the answer fetched for the wait is used (once)."""
    path = tmp_path / "init.lua"
    path.write_text(textwrap.dedent(POLICY))
    clock = FakeClock(start=1_700_000_000.0)
    rt = PolicyRuntime(path, clock=clock)
    rt.fire_init()
    rt.waits.dns = MxCache(TestResolver.from_zone_text(ZONE))
    ev = PolicyEvents(rt)
    with pytest.raises(PolicyWouldBlock) as info:
        ev.get_queue_config("gmail.test", None, None, None)
    await info.value.wait()
    clock.advance(3600)  # past the 300 s TTL
    config = ev.get_queue_config("gmail.test", None, None, None)
    assert config is not None
    assert config.retry_interval == 120
    with pytest.raises(PolicyWouldBlock):  # the fetched answer served one re-run only
        ev.get_queue_config("gmail.test", None, None, None)
