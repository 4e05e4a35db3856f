"""TestResolver (zone text, no network), IP lookup strategies, and MxCache TTLs."""

from __future__ import annotations

import asyncio

import pytest

from kumoq.dns.mx_cache import MxCache, MxFailure, MxFailureKind
from kumoq.dns.resolver import DnsStatus, IpAnswer, IpLookupStrategy, MxAnswer, TestResolver
from kumoq.dns.site_name import MailExchanger
from kumoq.errors import ConfigError

ZONES = """
$ORIGIN example.com.
@           600 IN MX 10 mx1
@           600 IN MX 20 mx2.example.com.
mx1         IN A     127.0.0.2
mx1         IN AAAA  ::1
mx2         IN A     127.0.0.3
mx2         IN A     127.0.0.4
alias       IN CNAME mx1
www         IN TXT   "no address here"
$ORIGIN gmail.test.
@           IN MX 5  gmail-smtp-in.l.google.test.
@           IN MX 10 alt1.gmail-smtp-in.l.google.test.
@           IN MX 20 alt2.gmail-smtp-in.l.google.test.
$ORIGIN nomail.test.
@           IN MX 0 .
$ORIGIN implicit.test.
$TTL 120
@           IN A 127.0.0.9
"""


@pytest.fixture
def resolver() -> TestResolver:
    return TestResolver.from_zone_text(ZONES)


async def test_mx_found_with_ttl(resolver: TestResolver) -> None:
    answer = await resolver.resolve_mx("Example.COM.")
    assert answer.status is DnsStatus.FOUND
    assert sorted(answer.records) == [(10, "mx1.example.com."), (20, "mx2.example.com.")]
    assert answer.ttl == 600


async def test_mx_null(resolver: TestResolver) -> None:
    answer = await resolver.resolve_mx("nomail.test")
    assert answer.records == ((0, "."),)


async def test_nxdomain_and_no_data(resolver: TestResolver) -> None:
    assert (await resolver.resolve_mx("missing.invalid")).status is DnsStatus.NXDOMAIN
    assert (await resolver.resolve_mx("mx1.example.com")).status is DnsStatus.NO_DATA
    assert (await resolver.resolve_ip("www.example.com")).status is DnsStatus.NO_DATA
    assert (await resolver.resolve_ip("nope.example.com")).status is DnsStatus.NXDOMAIN
    # Names that only appear as MX targets do not exist.
    assert (await resolver.resolve_mx("l.google.test")).status is DnsStatus.NXDOMAIN
    # An empty non-terminal exists: no data, not NXDOMAIN.
    extra = TestResolver.from_zone_text("$ORIGIN a.b.test.\nx IN A 127.0.0.1\n")
    assert (await extra.resolve_mx("b.test")).status is DnsStatus.NO_DATA


async def test_a_records_for_example_domains(resolver: TestResolver) -> None:
    answer = await resolver.resolve_ip("mx2.example.com", IpLookupStrategy.IPV4_ONLY)
    assert answer.status is DnsStatus.FOUND
    assert sorted(answer.addresses) == ["127.0.0.3", "127.0.0.4"]
    implicit = await resolver.resolve_ip("implicit.test")
    assert implicit.addresses == ("127.0.0.9",)
    assert implicit.ttl == 120


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (IpLookupStrategy.IPV4_ONLY, ("127.0.0.2",)),
        (IpLookupStrategy.IPV6_ONLY, ("::1",)),
        (IpLookupStrategy.IPV4_AND_IPV6, ("127.0.0.2", "::1")),
        (IpLookupStrategy.IPV4_THEN_IPV6, ("127.0.0.2",)),
        (IpLookupStrategy.IPV6_THEN_IPV4, ("::1",)),
    ],
)
async def test_ip_strategies(
    resolver: TestResolver, strategy: IpLookupStrategy, expected: tuple[str, ...]
) -> None:
    answer = await resolver.resolve_ip("mx1.example.com", strategy)
    assert answer.addresses == expected


async def test_then_strategy_falls_back_to_the_other_family(resolver: TestResolver) -> None:
    answer = await resolver.resolve_ip("mx2.example.com", IpLookupStrategy.IPV6_THEN_IPV4)
    assert answer.status is DnsStatus.FOUND
    assert len(answer.addresses) == 2
    none = await resolver.resolve_ip("mx2.example.com", IpLookupStrategy.IPV6_ONLY)
    assert none.status is DnsStatus.NO_DATA


async def test_cname_is_followed(resolver: TestResolver) -> None:
    answer = await resolver.resolve_ip("alias.example.com", IpLookupStrategy.IPV4_ONLY)
    assert answer.addresses == ("127.0.0.2",)


async def test_fail_and_heal(resolver: TestResolver) -> None:
    resolver.fail("example.com")
    answer = await resolver.resolve_mx("example.com")
    assert answer.status is DnsStatus.TEMP_FAIL
    assert "SERVFAIL" in answer.detail
    resolver.heal("example.com")
    assert (await resolver.resolve_mx("example.com")).status is DnsStatus.FOUND


async def test_temp_fail_beats_no_data_when_merging(resolver: TestResolver) -> None:
    resolver.fail("mx1.example.com")
    answer = await resolver.resolve_ip("mx1.example.com", IpLookupStrategy.IPV4_AND_IPV6)
    assert answer.status is DnsStatus.TEMP_FAIL


async def test_several_zone_texts_and_explicit_origin() -> None:
    resolver = TestResolver.from_zone_text("@ IN MX 10 mx.one.test.\n", origin="one.test")
    resolver.add_zone_text("$ORIGIN two.test.\n@ 30 IN MX 10 mx\n")
    resolver.add_zone_text("$ORIGIN one.test.\n@ IN MX 20 backup.one.test.\n")
    one = await resolver.resolve_mx("one.test")
    assert sorted(one.records) == [(10, "mx.one.test."), (20, "backup.one.test.")]
    two = await resolver.resolve_mx("two.test")
    assert two.records == ((10, "mx.two.test."),)
    assert two.ttl == 30
    multi = TestResolver.from_zone_texts(["$ORIGIN a.test.\n@ IN A 127.0.0.5\n"])
    assert (await multi.resolve_ip("a.test")).addresses == ("127.0.0.5",)


def test_bad_zone_text_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot parse zone text"):
        TestResolver.from_zone_text("$ORIGIN x.test.\n@ IN MX notanumber\n")


# --- MxCache ---------------------------------------------------------------------------------

T0 = 1_700_000_000.0


async def test_cache_positive_ttl(resolver: TestResolver) -> None:
    cache = MxCache(resolver)
    first = await cache.lookup_mx("example.com", T0)
    assert isinstance(first, MailExchanger)
    assert first.hosts == ("mx1.example.com", "mx2.example.com")
    assert first.site_name == "(mx1|mx2).example.com"
    assert await cache.lookup_mx("EXAMPLE.com.", T0 + 599) is first
    assert resolver.queries.count(("example.com", "MX")) == 1
    again = await cache.lookup_mx("example.com", T0 + 600)
    assert again == first
    assert resolver.queries.count(("example.com", "MX")) == 2


async def test_cache_gmail_site_name(resolver: TestResolver) -> None:
    mx = await MxCache(resolver).lookup_mx("gmail.test", T0)
    assert isinstance(mx, MailExchanger)
    assert mx.site_name == "(alt1|alt2)?.gmail-smtp-in.l.google.test"


async def test_cache_implicit_mx_uses_negative_ttl(resolver: TestResolver) -> None:
    cache = MxCache(resolver, negative_ttl=100)
    mx = await cache.lookup_mx("implicit.test", T0)
    assert isinstance(mx, MailExchanger)
    assert mx.is_implicit_mx
    assert mx.hosts == ("implicit.test",)
    assert cache.peek("implicit.test", T0 + 99) is mx
    assert cache.peek("implicit.test", T0 + 100) is None


async def test_cache_null_mx_bounces(resolver: TestResolver) -> None:
    result = await MxCache(resolver).lookup_mx("nomail.test", T0)
    assert isinstance(result, MxFailure)
    assert result.kind is MxFailureKind.NULL_MX
    assert result.permanent
    assert result.response == "556 5.1.10 Recipient address has a null MX"
    assert result.exchanger is not None
    assert result.exchanger.is_null_mx


async def test_cache_nxdomain_negative_ttl(resolver: TestResolver) -> None:
    cache = MxCache(resolver)
    result = await cache.lookup_mx("missing.invalid", T0)
    assert isinstance(result, MxFailure)
    assert result.kind is MxFailureKind.NXDOMAIN
    assert not result.permanent  # KumoMTA: 451 4.4.4 and retry (reference §1.6, §3.3)
    assert result.code == 451
    assert result.site == "NXDOMAIN:missing.invalid"
    # The domain appears, but the negative answer is cached for 300 s.
    resolver.add_zone_text("$ORIGIN missing.invalid.\n@ IN MX 10 mx.example.com.\n")
    assert await cache.lookup_mx("missing.invalid", T0 + 299) is result
    found = await cache.lookup_mx("missing.invalid", T0 + 300)
    assert isinstance(found, MailExchanger)


async def test_cache_nxdomain_can_bounce(resolver: TestResolver) -> None:
    result = await MxCache(resolver, nxdomain_bounces=True).lookup_mx("missing.invalid", T0)
    assert isinstance(result, MxFailure)
    assert result.permanent
    assert result.response.startswith("550 5.1.2 ")


async def test_cache_servfail_is_transient_and_short(resolver: TestResolver) -> None:
    cache = MxCache(resolver)
    resolver.fail("example.com")
    result = await cache.lookup_mx("example.com", T0)
    assert isinstance(result, MxFailure)
    assert result.kind is MxFailureKind.DNS_FAIL
    assert not result.permanent
    assert result.response.startswith("451 4.4.4 MX lookup for example.com failed: SERVFAIL")
    assert result.site == "DNSFAIL:example.com"
    resolver.heal("example.com")
    assert await cache.lookup_mx("example.com", T0 + 59) is result
    assert isinstance(await cache.lookup_mx("example.com", T0 + 60), MailExchanger)


async def test_cache_domain_literal_skips_dns(resolver: TestResolver) -> None:
    mx = await MxCache(resolver).lookup_mx("[127.0.0.1]", T0)
    assert isinstance(mx, MailExchanger)
    assert mx.site_name == "127.0.0.1"
    assert resolver.queries == []


class _SlowResolver:
    """Counts MX queries and blocks them until released."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()

    async def resolve_mx(self, domain: str) -> MxAnswer:
        self.calls += 1
        await self.release.wait()
        return MxAnswer(status=DnsStatus.FOUND, records=((10, f"mx.{domain}."),), ttl=60)

    async def resolve_ip(
        self, host: str, strategy: IpLookupStrategy = IpLookupStrategy.IPV4_THEN_IPV6
    ) -> IpAnswer:
        raise AssertionError("not used")


async def test_concurrent_misses_share_one_query() -> None:
    slow = _SlowResolver()
    cache = MxCache(slow)  # also checks _SlowResolver satisfies the Resolver Protocol
    tasks = [asyncio.create_task(cache.lookup_mx("a.test", T0)) for _ in range(5)]
    await asyncio.sleep(0)
    slow.release.set()
    results = await asyncio.gather(*tasks)
    assert slow.calls == 1
    assert all(r is results[0] for r in results)


async def test_cache_capacity_drops_oldest(resolver: TestResolver) -> None:
    cache = MxCache(resolver, capacity=2)
    for domain in ("example.com", "gmail.test", "implicit.test"):
        await cache.lookup_mx(domain, T0)
    assert len(cache) == 2
    assert cache.peek("example.com", T0) is None
    assert cache.peek("implicit.test", T0) is not None
