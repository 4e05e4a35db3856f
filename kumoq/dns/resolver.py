"""The DNS seam: the ``Resolver`` Protocol, its typed answers, and two resolvers.

- ``DnsPythonResolver`` asks real DNS through ``dns.asyncresolver`` (production only).
- ``TestResolver`` answers from RFC 1035 zone text held in memory (tests never touch the
  network; this is what ``kumo.dns.configure_test_resolver`` installs).

Both also answer other record types (``RecordResolver.resolve_records``: PTR and TXT for
``kumo.dns.lookup_ptr`` and ``lookup_txt``, kumoq.lua.dns_api).

Expected outcomes (NXDOMAIN, no data, SERVFAIL/timeout) are ``DnsStatus`` values inside the
answer, never exceptions. ``kumoq.dns.mx_cache`` sits on top of a resolver.

L1: may use asyncio and dnspython; imports only ``kumoq.errors`` from kumoq; must not import
lupa, the scheduler, egress, delivery or Lua layers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Protocol, final, runtime_checkable

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.resolver
import dns.zone

from kumoq.errors import ConfigError

__all__ = [
    "DEFAULT_ZONE_TTL",
    "DnsPythonResolver",
    "DnsStatus",
    "IpAnswer",
    "IpLookupStrategy",
    "MxAnswer",
    "RecordResolver",
    "RecordsAnswer",
    "Resolver",
    "TestResolver",
    "normalize_name",
]

DEFAULT_ZONE_TTL: Final = 300
"""TTL given to zone-text records that have none and follow no ``$TTL`` directive."""

_MAX_CNAME_CHAIN: Final = 8


class DnsStatus(StrEnum):
    """How a query ended. Only ``FOUND`` carries records."""

    FOUND = "found"
    NXDOMAIN = "nxdomain"  # the name does not exist
    NO_DATA = "no_data"  # the name exists but has no record of that type
    TEMP_FAIL = "temp_fail"  # SERVFAIL, timeout, no reachable nameserver


class IpLookupStrategy(StrEnum):
    """Which address families to ask for and in what order (KumoMTA ``ip_lookup_strategy``).

    The ``…then…`` forms ask the second family only when the first found nothing.
    """

    IPV4_ONLY = "Ipv4Only"
    IPV6_ONLY = "Ipv6Only"
    IPV4_AND_IPV6 = "Ipv4AndIpv6"
    IPV4_THEN_IPV6 = "Ipv4thenIpv6"
    IPV6_THEN_IPV4 = "Ipv6thenIpv4"


@dataclass(frozen=True, slots=True, kw_only=True)
class MxAnswer:
    """An MX query result: ``records`` are ``(preference, exchange)`` as DNS returned them.

    ``ttl`` is the record TTL for ``FOUND`` and 0 otherwise (the cache applies its own
    negative TTLs). ``detail`` explains a failure for logs.
    """

    status: DnsStatus
    records: tuple[tuple[int, str], ...] = ()
    ttl: float = 0.0
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class IpAnswer:
    """An address query result: ``addresses`` are textual IPv4/IPv6 addresses, A first."""

    status: DnsStatus
    addresses: tuple[str, ...] = ()
    ttl: float = 0.0
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordsAnswer:
    """Records of another type as text: a PTR's host name (with its trailing dot), a TXT
    record's strings joined into one."""

    status: DnsStatus
    records: tuple[str, ...] = ()
    ttl: float = 0.0
    detail: str = ""


class Resolver(Protocol):
    """What the MX cache and the connection planner need from DNS."""

    async def resolve_mx(self, domain: str) -> MxAnswer: ...

    async def resolve_ip(
        self, host: str, strategy: IpLookupStrategy = IpLookupStrategy.IPV4_THEN_IPV6
    ) -> IpAnswer: ...


@runtime_checkable
class RecordResolver(Protocol):
    """A resolver that answers other record types too (``PTR``, ``TXT``)."""

    async def resolve_records(self, name: str, rdtype: str) -> RecordsAnswer: ...


def _record_text(rdtype: str, text: str) -> str:
    """A record's value as the policy sees it: a TXT record's strings joined, unquoted."""
    if rdtype != "TXT":
        return text
    rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, text)
    assert isinstance(rdata, dns.rdtypes.ANY.TXT.TXT)
    return b"".join(rdata.strings).decode("utf-8", "replace")


def normalize_name(name: str) -> str:
    """Lowercase and strip one trailing dot: the key every resolver table uses."""
    name = name.strip().lower()
    return name[:-1] if name.endswith(".") and name != "." else name


# Best first: a found answer wins, then a transient failure (retry later), then no data.
_STATUS_RANK: Final = {
    DnsStatus.FOUND: 0,
    DnsStatus.TEMP_FAIL: 1,
    DnsStatus.NO_DATA: 2,
    DnsStatus.NXDOMAIN: 3,
}


def _merge(answers: Iterable[IpAnswer]) -> IpAnswer:
    """Concatenate the addresses of several per-family answers; keep the best status."""
    got = list(answers)
    found = [a for a in got if a.status is DnsStatus.FOUND]
    if found:
        return IpAnswer(
            status=DnsStatus.FOUND,
            addresses=tuple(addr for a in found for addr in a.addresses),
            ttl=min(a.ttl for a in found),
        )
    return min(got, key=lambda a: _STATUS_RANK[a.status])


async def _lookup_ip(
    query: Callable[[str, str], Awaitable[IpAnswer]], host: str, strategy: IpLookupStrategy
) -> IpAnswer:
    """Run ``query(host, 'A'|'AAAA')`` as ``strategy`` asks and merge the outcomes."""
    if strategy is IpLookupStrategy.IPV4_ONLY:
        return await query(host, "A")
    if strategy is IpLookupStrategy.IPV6_ONLY:
        return await query(host, "AAAA")
    if strategy is IpLookupStrategy.IPV4_AND_IPV6:
        return _merge([await query(host, "A"), await query(host, "AAAA")])
    first, second = ("A", "AAAA") if strategy is IpLookupStrategy.IPV4_THEN_IPV6 else ("AAAA", "A")
    answer = await query(host, first)
    if answer.status is DnsStatus.FOUND:
        return answer
    return _merge([answer, await query(host, second)])


@final
class DnsPythonResolver:
    """Real DNS through ``dns.asyncresolver.Resolver`` (system resolv.conf by default).

    Never used by unit tests. ``timeout`` is the whole-query lifetime in seconds.
    """

    def __init__(
        self,
        *,
        nameservers: list[str] | None = None,
        timeout: float = 5.0,
        resolver: dns.asyncresolver.Resolver | None = None,
    ) -> None:
        self._resolver = resolver or dns.asyncresolver.Resolver()
        if nameservers:
            self._resolver.nameservers = list(nameservers)
        self._timeout = timeout

    async def _query(
        self, name: str, rdtype: str
    ) -> tuple[DnsStatus, dns.resolver.Answer | None, str]:
        try:
            answer = await self._resolver.resolve(
                name, rdtype, raise_on_no_answer=False, lifetime=self._timeout, search=False
            )
        except dns.resolver.NXDOMAIN:
            return DnsStatus.NXDOMAIN, None, f"NXDOMAIN: {name}"
        except (dns.resolver.NoNameservers, dns.exception.Timeout, dns.resolver.YXDOMAIN) as exc:
            return DnsStatus.TEMP_FAIL, None, str(exc) or type(exc).__name__
        except dns.exception.DNSException as exc:
            return DnsStatus.TEMP_FAIL, None, str(exc) or type(exc).__name__
        if answer.rrset is None:
            return DnsStatus.NO_DATA, None, ""
        return DnsStatus.FOUND, answer, ""

    async def resolve_mx(self, domain: str) -> MxAnswer:
        status, answer, detail = await self._query(domain, "MX")
        if answer is None or answer.rrset is None:
            return MxAnswer(status=status, detail=detail)
        records = tuple((int(rdata.preference), rdata.exchange.to_text()) for rdata in answer.rrset)
        return MxAnswer(status=status, records=records, ttl=float(answer.rrset.ttl))

    async def _query_ip(self, host: str, rdtype: str) -> IpAnswer:
        status, answer, detail = await self._query(host, rdtype)
        if answer is None or answer.rrset is None:
            return IpAnswer(status=status, detail=detail)
        addresses = tuple(rdata.address for rdata in answer.rrset)
        return IpAnswer(status=status, addresses=addresses, ttl=float(answer.rrset.ttl))

    async def resolve_ip(
        self, host: str, strategy: IpLookupStrategy = IpLookupStrategy.IPV4_THEN_IPV6
    ) -> IpAnswer:
        return await _lookup_ip(self._query_ip, host, strategy)

    async def resolve_records(self, name: str, rdtype: str) -> RecordsAnswer:
        status, answer, detail = await self._query(name, rdtype)
        if answer is None or answer.rrset is None:
            return RecordsAnswer(status=status, detail=detail)
        records = tuple(_record_text(rdtype, rdata.to_text()) for rdata in answer.rrset)
        return RecordsAnswer(status=status, records=records, ttl=float(answer.rrset.ttl))


@dataclass(slots=True)
class _RRSet:
    """One name's records of one type, as plain text, with the smallest TTL seen."""

    values: list[str]
    ttl: int


@final
class TestResolver:
    """Answers MX/A/AAAA from zone text, with no network.

    Build with ``TestResolver.from_zone_text(text)`` and add more zones with
    ``add_zone_text``. Zone text is RFC 1035 master-file syntax; ``$ORIGIN`` and ``$TTL``
    directives work, several ``$ORIGIN`` blocks may share one text, and records without a TTL
    get ``DEFAULT_ZONE_TTL``. No SOA/NS is needed. Names present in no zone answer NXDOMAIN;
    names present without the asked type answer no-data; a CNAME is followed (8 hops).
    ``fail(name)`` makes a name answer ``TEMP_FAIL`` (SERVFAIL) for every type.
    ``queries`` records each ``(name, rdtype)`` asked, so tests can check caching.
    """

    __test__ = False  # not a pytest test class despite its name

    def __init__(self) -> None:
        self._records: dict[tuple[str, str], _RRSet] = {}
        self._names: set[str] = set()
        self._failing: dict[str, str] = {}
        self.queries: list[tuple[str, str]] = []

    @classmethod
    def from_zone_text(cls, text: str, origin: str | None = None) -> TestResolver:
        """A resolver holding one zone text; raises ``ConfigError`` if it does not parse."""
        resolver = cls()
        resolver.add_zone_text(text, origin)
        return resolver

    @classmethod
    def from_zone_texts(cls, texts: Iterable[str]) -> TestResolver:
        """A resolver holding several zone texts (each with its own ``$ORIGIN``)."""
        resolver = cls()
        for text in texts:
            resolver.add_zone_text(text)
        return resolver

    def add_zone_text(self, text: str, origin: str | None = None) -> None:
        """Parse ``text`` and add its records; same name and type in two texts are merged.

        ``origin`` defaults to the root, so relative names need an ``$ORIGIN`` line.
        """
        try:
            zone = dns.zone.from_text(
                f"$TTL {DEFAULT_ZONE_TTL}\n{text}",
                origin=origin or ".",
                relativize=False,
                check_origin=False,
            )
        except (dns.exception.DNSException, ValueError) as exc:
            raise ConfigError(f"test resolver: cannot parse zone text: {exc}") from exc
        for name, rdataset in zone.iterate_rdatasets():
            key_name = normalize_name(name.to_text())
            rdtype = dns.rdatatype.to_text(rdataset.rdtype)
            self._names.add(key_name)
            self._add_parents(key_name)
            values = [rdata.to_text() for rdata in rdataset]
            existing = self._records.get((key_name, rdtype))
            if existing is None:
                self._records[key_name, rdtype] = _RRSet(values, rdataset.ttl)
            else:
                existing.values.extend(v for v in values if v not in existing.values)
                existing.ttl = min(existing.ttl, rdataset.ttl)

    def _add_parents(self, name: str) -> None:
        # Empty non-terminals exist in DNS (no-data, not NXDOMAIN), e.g. ``l.google.com``.
        labels = name.split(".")
        for i in range(1, len(labels)):
            self._names.add(".".join(labels[i:]))

    def fail(self, name: str, detail: str = "SERVFAIL") -> None:
        """Make every query for ``name`` answer ``TEMP_FAIL`` until ``heal(name)``."""
        self._failing[normalize_name(name)] = detail

    def heal(self, name: str) -> None:
        """Undo ``fail(name)``."""
        self._failing.pop(normalize_name(name), None)

    def _lookup(self, name: str, rdtype: str) -> tuple[DnsStatus, _RRSet | None, str]:
        key = normalize_name(name)
        self.queries.append((key, rdtype))
        for _ in range(_MAX_CNAME_CHAIN):
            if key in self._failing:
                return DnsStatus.TEMP_FAIL, None, f"{self._failing[key]}: {key}"
            rrset = self._records.get((key, rdtype))
            if rrset is not None:
                return DnsStatus.FOUND, rrset, ""
            cname = self._records.get((key, "CNAME"))
            if cname is None:
                if key in self._names:
                    return DnsStatus.NO_DATA, None, ""
                return DnsStatus.NXDOMAIN, None, f"NXDOMAIN: {key}"
            key = normalize_name(cname.values[0])
        return DnsStatus.TEMP_FAIL, None, f"CNAME chain too long for {name}"

    async def resolve_mx(self, domain: str) -> MxAnswer:
        status, rrset, detail = self._lookup(domain, "MX")
        if rrset is None:
            return MxAnswer(status=status, detail=detail)
        records = []
        for value in rrset.values:
            pref, _, exchange = value.partition(" ")
            records.append((int(pref), exchange))
        return MxAnswer(status=status, records=tuple(records), ttl=float(rrset.ttl))

    async def _query_ip(self, host: str, rdtype: str) -> IpAnswer:
        status, rrset, detail = self._lookup(host, rdtype)
        if rrset is None:
            return IpAnswer(status=status, detail=detail)
        return IpAnswer(status=status, addresses=tuple(rrset.values), ttl=float(rrset.ttl))

    async def resolve_ip(
        self, host: str, strategy: IpLookupStrategy = IpLookupStrategy.IPV4_THEN_IPV6
    ) -> IpAnswer:
        return await _lookup_ip(self._query_ip, host, strategy)

    async def resolve_records(self, name: str, rdtype: str) -> RecordsAnswer:
        status, rrset, detail = self._lookup(name, rdtype)
        if rrset is None:
            return RecordsAnswer(status=status, detail=detail)
        records = tuple(_record_text(rdtype, value) for value in rrset.values)
        return RecordsAnswer(status=status, records=records, ttl=float(rrset.ttl))
